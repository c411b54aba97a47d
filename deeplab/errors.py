"""Errors caused by the user's input. Entry points print them as one line and exit non-zero."""


class UserError(Exception):
    """A mistake in a config, a dataset or a file the user gave; its message says how to fix it."""


class ConfigError(UserError):
    """A config value is invalid; the message names the key."""


class DatasetError(UserError):
    """A dataset is missing, laid out wrongly or holds a broken file; the message names the file."""


class CheckpointError(UserError):
    """A checkpoint or weights file cannot be used; the message names the file and why."""


class DivergenceError(UserError):
    """Training produced a non-finite loss; the message gives the iteration, lr and which loss."""
