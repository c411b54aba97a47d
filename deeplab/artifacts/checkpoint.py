"""Checkpoint files: read with weights_only (every problem one line), written atomically, and loaded into a model."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from pydantic import BaseModel
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from deeplab.artifacts.compat import config_diff
from deeplab.atomicfile import atomic_path
from deeplab.config.upgrade import upgrade_config
from deeplab.errors import CheckpointError, first_line


def _looks_truncated(path: Path) -> bool:
    """True for an empty file or a zip archive (what torch.save writes) whose end is missing."""
    with open(path, "rb") as f:
        head = f.read(4)
    return not head or (head == b"PK\x03\x04" and not zipfile.is_zipfile(path))


def load_file(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """Load a torch file with weights_only=True; user-facing problems become CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        # A damaged file fails in many ways (zip, EOF, OS, key and decoding errors), none a bug here.
        raise CheckpointError(why_unreadable(path, what, e)) from None


def why_unreadable(path: Path, what: str, e: Exception) -> str:
    """Why a torch file could not be loaded, in one line: refused pickle, truncated, not torch.save, corrupt."""
    # weights_only refuses any global outside tensors, numbers, strings and containers.
    refused = re.search(r"unsupported global[^\n]*", str(e), re.IGNORECASE)
    if isinstance(e, pickle.UnpicklingError) and refused:
        return (
            f"{what} file {path} was refused: it holds Python objects that could run code when loaded "
            f"({refused.group(0).strip().rstrip('.')}); only tensors, numbers, strings and containers "
            f"are accepted, so re-save it from a trusted environment as a plain state dict"
        )
    try:
        truncated = _looks_truncated(path)
    except OSError as read_error:
        return f"{what} file {path} cannot be read: {read_error.strerror or read_error}"
    if truncated:
        return (
            f"{what} file {path} is truncated (an interrupted write or copy?): "
            f"copy it again, or use an earlier one"
        )
    if isinstance(e, pickle.UnpicklingError):
        # torch's message starts with advice to load unsafely; keep only the unpickler's own reason.
        reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
        detail = f" ({reason.group(1).strip()})" if reason else ""
        return f"{what} file {path} is not a file written by torch.save, or is corrupt{detail}"
    return f"{what} file {path} is corrupt and cannot be read ({type(e).__name__}: {first_line(e)})"


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a training checkpoint: a dict with at least "model" (state dict) and "config" (resolved).

    mmap=True maps the tensors instead of reading them: the config can be checked before the weights are
    read (they are when used)."""
    obj = load_file(path, "checkpoint", mmap=mmap)
    if isinstance(obj, Mapping) and "model" in obj and "config" in obj:
        return {**obj, "config": upgrade_config(obj["config"])}
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint file {path} is a bare state dict ({len(obj)} tensors), not a checkpoint written by "
            f"train.py (which also holds the config): use it as initial weights instead (model.init_from=PATH, "
            f"backbone.pretrained=PATH for ImageNet weights, model.pretrained=PATH for torchvision's DeepLabV3)"
        )
    kind = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(
        f"checkpoint file {path} holds {kind}, not a training checkpoint "
        f"(a dict with 'model' and 'config', as train.py writes)"
    )


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write state to path atomically: a crash leaves either the old file or the new one, never a mix."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            # os.open with 0o666 lets the umask decide permissions, as for any other output file.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {path}: {e.strerror or e}; check free disk space and that the "
            f"directory is writable (any previous {path.name} was left intact)"
        ) from None
    except RuntimeError as e:
        # torch.save's zip writer turns some failed writes into RuntimeError ("unexpected pos").
        if not any(s in str(e) for s in ("write", "inline_container", "unexpected pos")):
            raise
        raise CheckpointError(
            f"could not write checkpoint {path}: {first_line(e)}; check free disk space and that the "
            f"directory is writable (any previous {path.name} was left intact)"
        ) from e


def load_model_state(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    path: str | Path,
    saved_cfg: Mapping | DictConfig | BaseModel | None = None,
    cfg: Mapping | DictConfig | BaseModel | None = None,
) -> None:
    """load_state_dict(strict=True); a mismatch names the differing config keys, else the parameters."""
    state_dict = _strip_wrapper_prefix(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    resized = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or resized:
        diffs = config_diff(saved_cfg, cfg) if saved_cfg is not None and cfg is not None else []
        if diffs:
            detail = "config keys differ: " + "; ".join(diffs)
        else:
            parts = []
            for label, names in (
                ("shape differs", resized),
                ("missing", missing),
                ("unexpected", unexpected),
            ):
                if names:
                    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                    parts.append(f"{label}: {', '.join(names[:3])}{more}")
            detail = "; ".join(parts)
        raise CheckpointError(f"checkpoint {path} does not fit this model ({detail})")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model ({first_line(e)})") from None


def _strip_wrapper_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept state dicts saved from a DDP ("module.") or torch.compile ("_orig_mod.") wrapper."""
    state = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        consume_prefix_in_state_dict_if_present(state, prefix)
    return state
