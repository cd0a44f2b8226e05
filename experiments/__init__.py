"""Named studies: each is a Hydra experiment config (conf/experiment/) plus a README here.

`BASELINES` names the method each study's tables compare against (`python -m analysis` uses it
for that sweep unless `baseline=` is given); a study not listed compares every method with AdamW
on the same adapter.
"""

BASELINES = {
    "balora_finetune": "lora/adamw",
    "riemannian_attention": "full/adamw",
}
