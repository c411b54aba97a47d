"""Checkpoints: atomic writes, weights_only loading, resume, architecture checks."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from deeplab.errors import CheckpointError


def load_file(path: str | Path, what: str = "checkpoint") -> Any:
    """Load a torch file with weights_only=True; user-facing problems become CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{what} file {path} was refused: it holds Python objects that could run code when loaded "
            f"(only tensors, numbers, strings and containers are accepted) ({str(e).splitlines()[0]})"
        ) from None
    except (zipfile.BadZipFile, EOFError, RuntimeError) as e:
        raise CheckpointError(
            f"{what} file {path} is truncated or corrupt and cannot be read ({str(e).splitlines()[0]})"
        ) from None
