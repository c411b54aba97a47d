"""Run-time decisions: device, precision, channels_last, and the normalisation done on the device."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from deeplab.errors import ConfigError
from deeplab.runtime import Normalizer, make_runtime, resolve_amp, resolve_device, resolve_flag
from deeplab.runtime import device as runtime

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


def test_cpu_resolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_amp("off", CPU) is None and resolve_amp("bf16", CPU) == torch.bfloat16
    assert resolve_flag(True, CPU) is True and resolve_flag(False, CPU, torch.bfloat16) is False
    # auto: bf16 + channels_last where the CPU computes bf16 natively, float32 contiguous elsewhere
    for native in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda native=native: native)
        rt = make_runtime("cpu", "auto", "auto")
        expected = (torch.bfloat16, True) if native else (None, False)
        assert (rt.device, rt.amp_dtype, rt.channels_last, rt.is_main) == (CPU, *expected, True)
    rt = make_runtime("cpu", "bf16", "auto")
    assert (rt.amp_dtype, rt.channels_last) == (torch.bfloat16, True)


def test_cpu_has_bf16_reads_the_cpu_flags() -> None:
    info = Path("/proc/cpuinfo")
    lines = (
        [line for line in info.read_text().splitlines() if line.startswith("flags")] if info.exists() else []
    )
    if not lines:
        pytest.skip("no /proc/cpuinfo flags here")
    flags = lines[0].split()
    assert runtime.cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_depthwise_convolutions_train_in_float32_under_cpu_bf16() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 2, 1))
    reference = copy.deepcopy(model)
    assert runtime.depthwise_in_float32(model) == 1  # the depthwise layer only
    x = torch.randn(2, 4, 6, 6)
    outputs = {}

    def record(name):
        return lambda module, args, out: outputs.__setitem__(name, out.dtype)

    model[1].register_forward_hook(record("depthwise"))
    model[2].register_forward_hook(record("pointwise"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert outputs == {"depthwise": torch.float32, "pointwise": torch.bfloat16}
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert outputs["depthwise"] == torch.bfloat16  # evaluation keeps bf16 (a faster forward)
    # the weights, a deep copy (EMA) and a state dict stay those of the model itself
    twin = copy.deepcopy(model).train()
    with torch.no_grad():
        twin[1].weight.mul_(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.allclose(twin(x), model.train()(x))
    assert model.state_dict().keys() == reference.state_dict().keys()
    model.train()
    torch.testing.assert_close(model(x), reference(x))  # no autocast: the same float32 computation


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_and_fp16_on_cpu_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^trainer\.device=cuda but no CUDA device is visible"):
        make_runtime("cuda", "off", "auto")
    with pytest.raises(ConfigError, match=r"^amp=fp16 needs a CUDA device"):
        make_runtime("cpu", "fp16", "auto", key="")
