"""Run-time setup, decided once: device, precision, channels_last, seeds, backend flags, input normalisation.

Models and datasets stay device-agnostic; the training loop, the evaluator and predict ask this file.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deeplab.distributed import DistInfo
from deeplab.errors import ConfigError


def resolve_device(name: str, local_rank: int = 0, key: str = "trainer.device") -> torch.device:
    """auto: CUDA (this process's GPU under torchrun) when visible, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name} but no CUDA device is visible; use {key}=cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def resolve_amp(setting: str, device: torch.device, key: str = "trainer.amp") -> torch.dtype | None:
    """Autocast dtype of a validated amp setting (auto, bf16, fp16, off), or None for full precision."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError(f"{key}=fp16 needs a CUDA device; use {key}=bf16 or off on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setting)


def resolve_flag(setting: str | bool, device: torch.device) -> bool:
    """`auto` means on with CUDA, off on the CPU."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Deterministic algorithms on request; otherwise cuDNN autotuning (fixed crop size) and TF32 on CUDA."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


class Normalizer:
    """(B, C, H, W) uint8 images on the device -> normalised float32 (channels_last when asked)."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool = False
    ) -> None:
        # mean and std in pixel units, (1, C, 1, 1)
        self.mean = torch.tensor([m * 255.0 for m in mean], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor([s * 255.0 for s in std], device=device).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs: the one place these decisions live (nanoGPT's `ctx`)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    dist: DistInfo = DistInfo()

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move the model to the device (and to channels_last memory when on)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def normalizer(self, mean: Sequence[float], std: Sequence[float]) -> Normalizer:
        return Normalizer(mean, std, self.device, self.channels_last)


def make_runtime(
    device: str, amp: str, channels_last: str | bool, dist: DistInfo | None = None, key: str = "trainer"
) -> Runtime:
    """The Runtime of validated settings; `key` prefixes the config keys named in errors."""
    dist = dist or DistInfo()
    prefix = f"{key}." if key else ""
    dev = resolve_device(device, dist.local_rank, f"{prefix}device")
    return Runtime(dev, resolve_amp(amp, dev, f"{prefix}amp"), resolve_flag(channels_last, dev), dist)
