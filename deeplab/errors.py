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


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an exception's message (messages printed to users stay on one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines:
        return lines[0]
    return type(error).__name__ if isinstance(error, BaseException) else ""


class ExportError(UserError):
    """An exported model is missing a runtime, cannot be written, or disagrees with PyTorch."""
