"""Run-time setup, decided once: device, precision, channels_last, seeds, backend flags, input normalisation.

Models and datasets stay device-agnostic; the training loop, the evaluator and predict ask this file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import types
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from deeplab.errors import ConfigError
from deeplab.runtime.distributed import DistInfo

log = logging.getLogger(__name__)


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


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16: Intel Xeons since Cooper Lake,
    AMD EPYCs since Zen 4); elsewhere bf16 autocast is emulated and slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_amp(setting: str, device: torch.device, key: str = "trainer.amp") -> torch.dtype | None:
    """Autocast dtype of a validated amp setting (auto, bf16, fp16, off), or None for full precision. auto is
    bf16 on a CUDA device that has it and on a CPU that computes it natively (benchmarks/cpu_train_step.py)."""
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError(f"{key}=fp16 needs a CUDA device; use {key}=bf16 or off on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setting)


def resolve_flag(setting: str | bool, device: torch.device, amp: torch.dtype | None = None) -> bool:
    """channels_last: `auto` means on with CUDA, and on the CPU with bf16 autocast (oneDNN's bf16 convolutions
    are fastest in NHWC; in float32 it depends on the network: benchmarks/cpu_train_step.py)."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cuda" or (device.type == "cpu" and amp == torch.bfloat16)


def _float32_training_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A depthwise convolution's forward, in float32 while training (bf16 autocast left off for it)."""
    if not self.training:
        return type(self).forward(self, x)
    with torch.autocast("cpu", enabled=False):
        return type(self).forward(self, x.float())


def depthwise_in_float32(model: nn.Module) -> int:
    """Train the depthwise convolutions in float32 under CPU bf16 autocast: oneDNN's bf16 depthwise backward is
    3-5x slower than its float32 one (EfficientNet-Lite0's 5x5 layers at 480x360: 100 ms against 20 ms), while
    the dense convolutions gain from bf16. In eval mode they stay bf16 (the forward is faster there). Returns
    the number of layers changed. The forward is bound to each module (types.MethodType), so deep copies
    (EMA) and state dicts are unaffected."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            module.forward = types.MethodType(_float32_training_forward, module)
            changed += 1
    return changed


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


DETERMINISTIC_COST = (
    "trainer.deterministic=true: deterministic kernels only (cuDNN without autotuning, cuBLAS with a fixed "
    "workspace); on a 2-core Xeon it made the quickstart 8-10% slower end to end (docs/training.md); on a GPU some "
    "backward kernels (bilinear upsampling's among them) have no deterministic version and stop the run with their name"
)


def deterministic_error(error: RuntimeError, device: torch.device) -> str | None:
    """The one line for an operation that has no deterministic kernel under trainer.deterministic=true (None
    for any other error)."""
    text = str(error)
    if "does not have a deterministic implementation" not in text:
        return None
    op = text.split(" does not have", 1)[0].strip().splitlines()[-1]
    return (
        f"trainer.deterministic=true: {op} has no deterministic kernel on {device.type}; set "
        "trainer.deterministic=false (seeded runs then differ in their last bits), or train on a device that has one"
    )


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Deterministic algorithms on request (an operation without a deterministic kernel then raises, and the
    engine names it: deterministic_error); otherwise cuDNN autotuning (fixed crop size) and TF32 on CUDA."""
    if deterministic:
        if device.type == "cuda":
            # cuBLAS is deterministic only with a fixed workspace, set before its first use
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        log.info("%s", DETERMINISTIC_COST)
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
        """Move the model to the device (and to channels_last memory when on); under CPU bf16 autocast its
        depthwise convolutions train in float32 (depthwise_in_float32)."""
        model.to(self.device)
        if self.device.type == "cpu" and self.amp_dtype == torch.bfloat16:
            depthwise_in_float32(model)
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
    dtype = resolve_amp(amp, dev, f"{prefix}amp")
    return Runtime(dev, dtype, resolve_flag(channels_last, dev, dtype), dist)


def free_memory(device: torch.device) -> int | None:
    """Bytes free for tensors on `device`: the GPU's free memory, or the machine's available memory
    (Linux's MemAvailable); None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
