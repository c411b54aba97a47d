"""Checkpoints: atomic writes, weights_only loading, the state a run resumes from, architecture checks."""

from __future__ import annotations

import functools
import os
import pickle
import random
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from deeplab.atomicfile import atomic_path
from deeplab.config import TrainConfig, flatten
from deeplab.errors import CheckpointError, ConfigError, first_line
from deeplab.roles import Kind, key_roles, role_of, upgrade


@functools.cache
def _roles() -> dict[str, Kind]:
    """The role of every key of the training config, as deeplab/config.py declares it."""
    return key_roles(TrainConfig)


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


def upgrade_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the keys added since it was written filled in, with the values that
    reproduce how it was trained (declared next to each key in deeplab/config.py; the loss group: see
    LossConfig); class names that only the dataset's name implied are written out."""
    from deeplab.data.classes import with_official_names

    upgraded = upgrade(TrainConfig, config)
    if isinstance(upgraded.get("dataset"), Mapping):
        upgraded["dataset"] = with_official_names(upgraded["dataset"])
    return upgraded


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


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _plain(cfg: Mapping | DictConfig | BaseModel) -> dict[str, Any]:
    if isinstance(cfg, BaseModel):
        return cfg.model_dump()
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def config_diff(
    saved: Mapping | DictConfig | BaseModel,
    current: Mapping | DictConfig | BaseModel,
    roles: Sequence[Kind] = ("architecture",),
) -> list[str]:
    """Differing leaf values of the keys with these roles, e.g. "backbone.output_stride: checkpoint 16,
    config 8"."""
    old, new = flatten(_plain(saved)), flatten(_plain(current))
    diffs = []
    for leaf in sorted(set(old) | set(new)):
        if role_of(leaf, _roles()) not in roles:
            continue
        a, b = old.get(leaf, _MISSING), new.get(leaf, _MISSING)
        if a != b:
            diffs.append(f"{leaf}: checkpoint {a}, config {b}")
    return diffs


def check_compatible(
    saved_cfg: Mapping | DictConfig | BaseModel,
    cfg: Mapping | DictConfig | BaseModel,
    path: str | Path,
) -> None:
    """Raise CheckpointError listing the architecture keys whose values differ from the checkpoint's."""
    diffs = config_diff(saved_cfg, cfg)
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was made for a different model: {'; '.join(diffs)} "
            f"(drop these overrides, or use a checkpoint trained with them)"
        )


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


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states, made of tensors and plain types (weights_only-safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    # Only when CUDA is in use: asking for the states would otherwise initialise it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what rng_state() captured; parts missing from state are left as they are."""
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if "numpy" in state:
        npy = state["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        # A run resumed on fewer or more GPUs restores the devices both runs have.
        for device, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


# ----------------------------------------------------------------------------- the training state


def resume_path(setting: str | None, ckpt_dir: Path) -> Path | None:
    """The last.pt that trainer.resume names: auto (the run dir's, if any), a path, or None."""
    if setting is None:
        return None
    if setting == "auto":
        last = ckpt_dir / "last.pt"
        return last if last.is_file() else None
    path = Path(setting)
    if not path.is_file():
        raise ConfigError(f"trainer.resume: no checkpoint at {path}; give a last.pt path, auto, or null")
    return path


@dataclass
class Resumed:
    """Where a run continues: the last finished iteration, the best validation mIoU, the last metrics."""

    iteration: int = 0
    best_miou: float = -1.0
    metrics: dict[str, Any] | None = None
    elapsed: float = 0.0  # seconds of training up to `iteration` (validations included), over all processes


def training_state(
    model: nn.Module,
    config: dict[str, Any],
    progress: Resumed,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """The dict a checkpoint holds; without optimizer (best.pt) the weights only, a third of last.pt."""
    state = {
        "model": model.state_dict(),
        "iteration": progress.iteration,
        "best_miou": progress.best_miou,
        "metrics": progress.metrics,
        "elapsed": progress.elapsed,
        "config": config,
    }
    if optimizer is not None:
        assert scheduler is not None and scaler is not None
        state |= {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
        }
    return state


def check_resumable(saved_cfg: Mapping[str, Any], cfg: Mapping[str, Any], path: Path) -> None:
    """A resumed run continues the same model, on the same data, with the same optimiser: else one line
    naming the keys that differ."""
    check_compatible(saved_cfg, cfg, path)
    data = config_diff(saved_cfg, cfg, ("data",))
    if data:
        raise CheckpointError(
            f"checkpoint {path} was trained on other data: {'; '.join(data)}; a resumed run continues on the "
            "same data: drop these overrides, or start a new run in another hydra.run.dir"
        )
    optim = config_diff(saved_cfg, cfg, ("optimiser",))
    if optim:
        raise CheckpointError(
            f"{'; '.join(optim)} (checkpoint {path}): a resumed run continues the checkpoint's optimiser "
            "state, which holds these values; drop the override, or start a new run in another hydra.run.dir"
        )


def best_so_far(ckpt_dir: Path, cfg: Mapping[str, Any]) -> float:
    """The validation mIoU of the run dir's best.pt (-1 without one), which a new best.pt must beat.

    A best.pt of another model is not replaced silently: that is an error naming the keys.
    """
    path = ckpt_dir / "best.pt"
    if not path.is_file():
        return -1.0
    best = load_checkpoint(path)
    check_compatible(best["config"], cfg, path)
    return float((best.get("metrics") or {}).get("miou", best.get("best_miou", -1.0)))


def open_resume(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The last.pt a run resumes from (its tensors mapped, not read), checked before any data is listed:
    the same model, data and optimiser, and a resumable file."""
    ckpt = load_checkpoint(path, mmap=True)
    check_resumable(ckpt["config"], config, path)
    if "optimizer" not in ckpt:
        raise CheckpointError(
            f"trainer.resume: {path} holds weights only (best.pt is written for evaluation); "
            "resume from the run's checkpoints/last.pt"
        )
    return ckpt


def restore_training(
    ckpt: dict[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    restore_rng: bool = True,
) -> Resumed:
    """Load a checkpoint opened with open_resume into the training objects."""
    load_model_state(model, ckpt["model"], path)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if restore_rng:
        set_rng_state(ckpt["rng"])  # dropout continues its random stream
    return Resumed(
        int(ckpt["iteration"]),
        float(ckpt.get("best_miou", -1.0)),
        ckpt.get("metrics"),
        float(ckpt.get("elapsed", 0.0)),
    )
