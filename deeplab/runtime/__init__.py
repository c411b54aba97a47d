"""Where and how the code runs, decided once: device and precision (device.py), torchrun's processes and their
collectives (distributed.py), stop signals (signals.py)."""

from deeplab.runtime.device import (
    Normalizer,
    Runtime,
    autocast,
    configure_backends,
    cpu_has_bf16,
    depthwise_in_float32,
    make_runtime,
    resolve_amp,
    resolve_device,
    resolve_flag,
    seed_everything,
)

__all__ = [
    "Normalizer", "Runtime", "autocast", "configure_backends", "cpu_has_bf16", "depthwise_in_float32",
    "make_runtime", "resolve_amp", "resolve_device", "resolve_flag", "seed_everything",
]  # fmt: skip
