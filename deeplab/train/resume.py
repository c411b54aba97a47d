"""What a run resumes from: the training state a last.pt holds (weights, optimiser, schedule, GradScaler, RNG
states, progress), where trainer.resume points, and the checks that a resumed run continues the same run."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deeplab.artifacts.checkpoint import load_checkpoint, load_model_state
from deeplab.artifacts.compat import check_compatible, config_diff
from deeplab.errors import CheckpointError, ConfigError


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
    # the scalars logged since the checkpoint before (step -> name -> value): what loggers may have missed
    log_rows: dict[int, dict[str, float]] = field(default_factory=dict)
    # trainer.early_stop: the best mIoU that counted (rose by min_delta), where, the validations since, and why
    # the run ended early ("" while it goes on)
    early_stop: dict[str, Any] = field(
        default_factory=lambda: {"best": -1.0, "iteration": 0, "stale": 0, "stopped": ""}
    )


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
        "log_rows": progress.log_rows,
        "early_stop": progress.early_stop,
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
        dict(ckpt.get("log_rows") or {}),
        dict(ckpt.get("early_stop") or Resumed().early_stop),
    )
