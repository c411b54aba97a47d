"""A training run interrupted at a checkpoint, in process: train() raises KeyboardInterrupt when it writes the
last.pt of a given iteration (after writing it, or instead of it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@contextlib.contextmanager
def interrupted_at(monkeypatch: pytest.MonkeyPatch, iteration: int, written: bool = True) -> Iterator[None]:
    """Inside the block, writing last.pt at `iteration` raises KeyboardInterrupt: after the file is written
    (written=True: a stop right after a checkpoint), or instead (False: killed while writing it, the previous
    last.pt kept)."""
    import deeplab.train.engine as engine

    real_save = engine.save_checkpoint

    def save(path: Path, state: dict[str, Any]) -> None:
        if Path(path).name == "last.pt" and state["iteration"] == iteration:
            if written:
                real_save(path, state)
            raise KeyboardInterrupt
        real_save(path, state)

    with monkeypatch.context() as m:
        m.setattr(engine, "save_checkpoint", save)
        yield
