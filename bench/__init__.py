"""lowrank-bench: adapters x optimizers on low-rank parameters of small attention LMs."""

__version__ = "0.1.0"
