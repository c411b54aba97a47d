"""What every entry point does with a user's mistake: one line on stderr, exit status 2.

That includes the mistakes Hydra finds while composing the config from the command line (an unknown key, an
option of a config group that does not exist, an override that does not parse), which `hydra.main` would
print in five lines with exit status 1: the entry points use `hydra_main` below instead.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import inspect
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from deeplab.errors import UserError, first_line

GRAMMAR_URL = "https://hydra.cc/docs/advanced/override_grammar/basic/"


class Terminated(BaseException):
    """SIGTERM or SIGHUP inside `exit_on_user_error`: raised where the command is, so that the files being written
    are removed on the way out (deeplab.atomicfile) instead of left half-written by a process killed mid-write.
    A BaseException, as KeyboardInterrupt, so that no `except Exception` on the way takes it for an error."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_by_exception() -> Iterator[None]:
    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {}
    for name in names:
        with contextlib.suppress(ValueError):  # not the main thread: signals stay as they were
            previous[name] = signal.signal(getattr(signal, name), _raise_terminated)
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """A UserError (config, data, checkpoint, divergence) prints `error: <message>` and exits with 2; Ctrl-C prints
    one line and exits with 130, SIGTERM and SIGHUP with 128 + the signal's number, instead of a traceback or a
    kill mid-write (every output is written whole or not at all)."""
    try:
        with _terminate_by_exception():
            yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): no file was left half-written", file=sys.stderr)
        sys.exit(130)
    except Terminated as e:
        print(f"stopped by {e}: no file was left half-written", file=sys.stderr)
        sys.exit(128 + e.signum)


def _did_you_mean(word: str, candidates: Sequence[str], prefix: str = "") -> str:
    # 0.75: typos (max_iter, flp, trainr) match, different words (class_weights / aux_weight) do not
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.75)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


def _options_with_key(config_dir: Path | None, key: str) -> list[str]:
    """`loss=ohem` for key `loss.thresh`: the options of the key's config group whose file sets the key."""
    group, _, rest = key.partition(".")
    if config_dir is None or not rest or not (config_dir / group).is_dir():
        return []
    found = []
    for path in sorted((config_dir / group).glob("*.yaml")):
        node = OmegaConf.load(path)
        absent = object()  # a key set to null is there too
        if isinstance(node, DictConfig) and OmegaConf.select(node, rest, default=absent) is not absent:
            found.append(f"{group}={path.stem}")
    return found


def _unknown_key(error: ConfigKeyError | ConfigAttributeError, config_dir: Path | None) -> str:
    """`trainer.max_iter: unknown key; did you mean trainer.max_iters?` (the close keys of the same section),
    or the section's keys and the options of its group that have the key."""
    key = str(error.full_key)
    section, _, name = key.rpartition(".")
    parent = error.parent_node
    siblings = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
    hint = _did_you_mean(name, siblings, f"{section}." if section else "")
    if not hint and siblings:
        hint = f"; the keys of {section or 'the config'} are {', '.join(siblings)}"
        elsewhere = _options_with_key(config_dir, key)
        if elsewhere:
            hint += f" ({name} is a key of {' and '.join(elsewhere)})"
    return f"{key}: unknown key{hint}"


def _unknown_option(error: MissingConfigException, config_dir: Path | None = None) -> str:
    """`loss=nope: loss has no option nope (no configs/loss/nope.yaml); the options are cross_entropy, ...`.
    An option in a list (logger=[nope]) comes without Hydra's options: they are read from configs/<group>/."""
    group, _, option = str(error.missing_cfg_file).rpartition("/")
    found = list(error.options or [])
    if not found and config_dir is not None and (config_dir / group).is_dir():
        found = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
    error.options = found
    options = ", ".join(found)
    if group.startswith("hydra/"):  # Hydra's own groups: their options come with Hydra and its plugins
        where = "; is the Hydra plugin that provides it installed? (see README)"
    else:
        where = f" (no configs/{group}/{option}.yaml)"
    hint = _did_you_mean(option, list(error.options or []), f"{group}=")
    listed = f" (options: {options})" if hint else f"; the options are {options}"
    return f"{group}={option}: {group} has no option {option}{where}{hint}{listed}"


def _unparsable(error: OverrideParseException, unset: Sequence[str]) -> str:
    """An argument that is not `key=value`: a bare path is offered as the value of the first unset key."""
    override = error.override
    if "=" not in override:
        if override in unset:  # `checkpoint` alone
            return f"{override}: no value; give it as {override}=..."
        hint = f"; did you mean {unset[0]}={override}?" if unset else f" (see {GRAMMAR_URL})"
        return f"{override}: not a key=value override{hint}"
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    detail = next((line for line in lines if not line.startswith(("Error parsing override", "See "))), "")
    if detail.startswith("LexerNoViableAltException"):
        detail = "a character the override grammar does not take unquoted"
    return (
        f"{override}: cannot parse this override ({detail}); quote a value that holds spaces, commas or brackets, "
        f"e.g. key='a value' (see {GRAMMAR_URL})"
    )


def composition_error(
    error: BaseException, unset: Sequence[str] = (), config_dir: Path | None = None
) -> str | None:
    """One line for a mistake Hydra found while composing the config from the command line, None for
    anything else (which then keeps its traceback). `unset`: the keys the config leaves `???` that the
    command line does not set; `config_dir`: configs/, where a group's options are looked up for a key."""
    cause = error.__cause__
    if isinstance(error, OverrideParseException):
        return _unparsable(error, unset)
    listed = config_dir is not None and "/" in str(getattr(error, "missing_cfg_file", "") or "")
    if (
        isinstance(error, MissingConfigException)
        and error.missing_cfg_file
        and (error.options is not None or listed)
    ):
        return _unknown_option(error, config_dir)
    for err in (error, cause):
        if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and err.full_key:
            return _unknown_key(err, config_dir)
        if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
            return f"{err.full_key}: {first_line(err)}"  # e.g. a value Hydra's own schema cannot convert
    if isinstance(error, HydraException):
        # e.g. `~key` of a key that does not exist, `+key` of one that does, a sweep without -m; Hydra's own
        # lines say how to fix it.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return " ".join(lines).replace("\\'", "'")
    return None


def unset_keys(config_file: Path, overrides: Sequence[str]) -> list[str]:
    """The top-level keys the primary config leaves `???` (checkpoint, input) that no override sets."""
    cfg = OmegaConf.load(config_file)
    given = {arg.partition("=")[0].lstrip("+~") for arg in overrides if "=" in arg}
    mandatory = [str(k) for k in cfg if isinstance(cfg, DictConfig) and OmegaConf.is_missing(cfg, k)]
    return [key for key in mandatory if key not in given]


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """os.environ[name] set to value (None: removed) inside the block, as it was after. Hydra raises what it
    would print when HYDRA_FULL_ERROR=1 (its documented switch), so that it can be reported."""
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def hydra_main(
    config_path: str, config_name: str
) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """`hydra.main(version_base="1.3", ...)`, with the user's mistakes in composing the config reported as one
    line and exit status 2 (`composition_error`). `config_path` is relative to the file of the decorated
    function, as with hydra.main. Everything else (-m, --help, --cfg, sweeps, hydra.* overrides) is Hydra's.
    HYDRA_FULL_ERROR=1 shows Hydra's own messages and traces."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        config_dir = (Path(inspect.getfile(task)).parent / config_path).resolve()
        from_task: list[BaseException] = []  # what the task raised is not a composition error

        user_setting: list[str | None] = [None]  # HYDRA_FULL_ERROR as the user set it (None: unset)

        @functools.wraps(task)
        def recorded(cfg: DictConfig) -> Any:
            # The task, and the processes it starts (sweep jobs, DataLoader workers), see the user's setting.
            with _environment("HYDRA_FULL_ERROR", user_setting[0]):
                try:
                    return task(cfg)
                except Exception as e:
                    from_task.append(e)
                    raise

        # An absolute config_path: the same configs/ whatever module name the entry point is imported under.
        app = hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)(recorded)

        @functools.wraps(task)
        def main(cfg_passthrough: DictConfig | None = None) -> Any:
            if cfg_passthrough is not None:
                return task(cfg_passthrough)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                return app()
            user_setting[0] = os.environ.get("HYDRA_FULL_ERROR")
            try:
                with _environment("HYDRA_FULL_ERROR", "1"):
                    return app()
            except Exception as e:
                message = None
                if not any(e is raised for raised in from_task):
                    unset = unset_keys(config_dir / f"{config_name}.yaml", sys.argv[1:])
                    message = composition_error(e, unset, config_dir)
                if message is None:
                    raise
                print(f"error: {message}", file=sys.stderr)
                sys.exit(2)
            finally:
                from_task.clear()

        return main

    return decorate


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the data commands: a mistake is one `error:` line (with a did-you-mean for a misspelt
    option) and exit status 2, as with the Hydra entry points."""

    def error(self, message: str) -> NoReturn:
        hint = ""
        if message.startswith("unrecognized arguments:"):
            options = [s for action in self._actions for s in action.option_strings]
            unknown = [w for w in message.partition(":")[2].split() if w.startswith("-")]
            hint = _did_you_mean(unknown[0].partition("=")[0], options) if unknown else ""
        print(f"error: {message}{hint} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
