"""Run-time decisions: device, precision, channels_last, and the normalisation done on the device."""

from __future__ import annotations

import pytest
import torch

from deeplab.errors import ConfigError
from deeplab.runtime import Normalizer, make_runtime, resolve_amp, resolve_device, resolve_flag

CPU = torch.device("cpu")


def test_normalizer_equals_the_formula_and_keeps_channels_last() -> None:
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    want = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    got = Normalizer(mean, std, CPU)(images)
    torch.testing.assert_close(got, want)
    assert got.dtype == torch.float32
    assert Normalizer(mean, std, CPU, channels_last=True)(images).is_contiguous(
        memory_format=torch.channels_last
    )


def test_cpu_resolutions() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_amp("auto", CPU) is None and resolve_amp("off", CPU) is None
    assert resolve_amp("bf16", CPU) == torch.bfloat16
    assert resolve_flag("auto", CPU) is False and resolve_flag(True, CPU) is True
    rt = make_runtime("cpu", "bf16", "auto")
    assert (rt.device, rt.amp_dtype, rt.channels_last, rt.is_main) == (CPU, torch.bfloat16, False, True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_and_fp16_on_cpu_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^trainer\.device=cuda but no CUDA device is visible"):
        make_runtime("cuda", "off", "auto")
    with pytest.raises(ConfigError, match=r"^amp=fp16 needs a CUDA device"):
        make_runtime("cpu", "fp16", "auto", key="")
