"""The error every layer raises for bad input; a module of its own so that any package can raise
it without importing the schema (bench.config imports the packages for their registries)."""


class ConfigError(ValueError):
    """A configuration problem found before training; the message names the key."""
