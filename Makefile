# lowrank-bench. The two commands a new user runs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
export WANDB_SILENT := true

.PHONY: setup run test plots perf studies lint clean

setup: $(STAMP)

# torch first and pinned: an unpinned torch (or a package pulling one) downloads a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,hf,slurm]"
	rm -f $(VENV)/.installed-*
	touch $@

run: setup                    ## the default sweep (conf/config.yaml), then every figure
	$(PY) -m bench.run -m
	$(MAKE) plots

test: setup                   ## the test suite (slow and perf tests excluded), a worker per core
	WANDB_MODE=disabled $(PY) -m pytest -q -n auto --dist worksteal

plots: setup                  ## every figure and table, from the run records in runs/
	$(PY) -m analysis

perf: setup                   ## benchmarks: ratios side by side in one run; table in results/perf/<date>.md
	WANDB_MODE=disabled PERF_RESULTS=results/perf $(PY) -m pytest -m perf -s -q -p no:randomly -p no:xdist

studies: setup                ## every study at its documented size (resumable)
	$(PY) -m experiments

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf runs figures .cache

# The paper's scale on one CUDA GPU (experiments/gpu_check.py): CUDA tests, throughput and MFU,
# a short paired comparison, its figures; under 8 minutes on one H200, into results/gpu/<date>/.
# Where the GPU machine has torch but no .venv: `make gpu-check PY=python3` (no setup step).
.PHONY: gpu-check gpu-check-dry
GPU_CHECK := WANDB_MODE=disabled $(PY) -m experiments.gpu_check $(if $(GPU_OUT),--out $(GPU_OUT))

gpu-check: $(if $(filter $(VENV)/bin/python,$(PY)),setup)   ## one GPU, < 8 min: results/gpu/<date>/
	$(GPU_CHECK)

gpu-check-dry: $(if $(filter $(VENV)/bin/python,$(PY)),setup)   ## the same script, tiny, on the CPU
	$(GPU_CHECK) --dry
