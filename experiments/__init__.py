"""Named studies: each is one Hydra experiment config, conf/experiment/<name>.yaml, whose
`study:` block declares its baseline, stages, time per run and smoke-test overrides, plus its
README here (experiments/<name>/README.md). `python -m experiments` discovers them; the smoke
test and `python -m analysis` read the same block (analysis from the run records)."""
