"""Named studies: each is a Hydra experiment config (conf/experiment/) plus a README here."""
