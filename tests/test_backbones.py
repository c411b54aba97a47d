"""Backbones beyond ResNet-50/101: ResNet-18/34, MobileNetV2/V3-Large (torchvision), Xception-65 and any timm
encoder: output sizes, dilation, torchvision's MobileNetV3 DeepLab reproduced exactly, weights, errors."""

from __future__ import annotations

import sys

import pytest
import safetensors.torch
import timm
import torch
from helpers.configs import compose_config
from helpers.torchvision_refs import torchvision_reference
from test_models import conv_geometry
from torch import nn
from torchvision.models import mobilenet_v2, mobilenet_v3_large, resnet18

from deeplab.config import train_config
from deeplab.errors import CheckpointError, ConfigError
from deeplab.models import build_model
from deeplab.models.mobilenet import MobileNetBackbone

BACKBONES = {  # name -> extra overrides
    "resnet18": [],
    "resnet34": [],
    "mobilenet_v2": [],
    "mobilenet_v3_large": [],
    "xception65": [],
    "timm": ["backbone.model=efficientnet_b0"],
}


def build(*overrides: str):
    return build_model(compose_config(["backbone.pretrained=false", *overrides]))


# Every backbone x OS x head; Xception-65 (the slowest to build) runs two of its four by default, one per OS
# and per head, the other two with -m slow.
CASES = [
    pytest.param(
        b,
        os,
        head,
        marks=(pytest.mark.slow,) if b == "xception65" and (os == 8) == (head == "deeplabv3") else (),
    )
    for b in BACKBONES
    for os in (8, 16)
    for head in ("deeplabv3", "deeplabv3plus")
]


@pytest.mark.parametrize(("backbone", "output_stride", "head"), CASES)
def test_every_backbone_keeps_odd_input_sizes(backbone: str, output_stride: int, head: str) -> None:
    torch.manual_seed(0)
    model = build(f"backbone={backbone}", *BACKBONES[backbone], f"backbone.output_stride={output_stride}",
                  f"model={head}", "model.aux_head=true").eval()  # fmt: skip
    assert model.output_stride == output_stride
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 35, 29))
        out = model(torch.randn(1, 3, 35, 29))["out"]
    assert out.shape == (1, 21, 35, 29) and torch.isfinite(out).all()
    # channel counts are read from the backbone; low-level features at stride 4, ASPP's at the output stride
    assert features["low"].shape[1] == model.backbone.low_channels and features["low"].shape[-2:] == (9, 8)
    assert features["out"].shape[1] == model.backbone.out_channels
    assert features["out"].shape[-2] == -(-35 // output_stride)
    assert features["aux"].shape[1] == model.backbone.aux_channels


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "xception65"])
def test_set_output_stride_round_trips_keeping_weights(backbone: str) -> None:
    torch.manual_seed(0)
    model = build(f"backbone={backbone}", "backbone.output_stride=16").eval()
    x = torch.randn(1, 3, 33, 41)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out16 = model(x)["out"]
        model.set_output_stride(8)
        direct = build(f"backbone={backbone}", "backbone.output_stride=8").eval()
        direct.load_state_dict(model.state_dict())
        assert torch.allclose(model(x)["out"], direct(x)["out"], atol=1e-5)  # the same as built at 8
        assert model.backbone(x)["out"].shape[-2:] == (5, 6)
        model.set_output_stride(16)
        assert torch.equal(model(x)["out"], out16)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_mobilenet_dilation_equals_torchvisions_dilated_mobilenet_v3() -> None:
    ours = MobileNetBackbone(mobilenet_v3_large().features, output_stride=16)
    assert conv_geometry(ours.features) == conv_geometry(mobilenet_v3_large(dilated=True).features)
    ours.set_output_stride(8)  # the stride-16 stage dilated too: rate 2 there, 4 in the last stage
    rates = [max(c.dilation[0] for c in b.modules() if isinstance(c, nn.Conv2d)) for b in ours.features]
    assert rates == [1] * 7 + [2] * 6 + [4] * 3 + [1]
    strides = [max(c.stride[0] for c in b.modules() if isinstance(c, nn.Conv2d)) for b in ours.features]
    assert strides == [2, 1, 2, 1, 2] + [1] * 12  # stride 8 is kept from block 7 on


@pytest.fixture(scope="module")
def torchvision_mobilenet():
    return torchvision_reference("mobilenet_v3_large")


def test_torchvision_mobilenet_file_restores_for_evaluate_and_predict(torchvision_mobilenet) -> None:
    from deeplab.deploy.restore import load_trained_model

    reference, path = torchvision_mobilenet
    model, cfg = load_trained_model(path)
    assert cfg.backbone.name == "mobilenet_v3_large" and cfg.model.head_conv and not model.training
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert (model(x)["out"] - reference(x)["out"]).abs().max() < 1e-4


@pytest.mark.parametrize(("name", "network", "dropped"), [
    ("mobilenet_v2", mobilenet_v2, "features.18."),  # the 1280-channel conv, not part of the backbone
    ("mobilenet_v3_large", mobilenet_v3_large, None),
    ("resnet18", resnet18, None),
])  # fmt: skip
def test_imagenet_weights_from_a_local_file(name, network, dropped, tmp_path) -> None:
    torch.manual_seed(3)
    state = network().state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    backbone = build(f"backbone={name}", f"backbone.pretrained={path}").backbone
    loaded = backbone.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())
    if dropped:
        assert any(k.startswith(dropped) for k in state) and not any(k.startswith(dropped) for k in loaded)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_from_a_local_file(suffix, tmp_path) -> None:
    torch.manual_seed(4)
    state = timm.create_model("resnet18", pretrained=False).state_dict()  # as the hub's file holds it
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    body = build("backbone=timm", "backbone.model=resnet18", f"backbone.pretrained={path}").backbone.body
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["backbone.model=vit_small_patch16_224"], r"^backbone\.model: timm's vit_small_patch16_224 cannot change its output stride"),
        (["backbone.model=no_such_net"], r"^backbone\.model: timm has no model 'no_such_net'"),
        (["backbone.model=resnet18", "backbone.pretrained=true"], r"^backbone\.pretrained: could not download timm's resnet18 weights .* backbone\.pretrained=/path/to/file\.safetensors, or .* backbone\.pretrained=false"),
        (["backbone.model=resnet18", "backbone.pretrained=/no/such/file.safetensors"], r"^backbone\.pretrained file not found"),
    ],
)  # fmt: skip
def test_timm_mistakes_are_one_line(overrides, message) -> None:
    with pytest.raises((ConfigError, CheckpointError), match=message) as info:
        build_model(compose_config(["backbone=timm", *overrides]))
    assert "\n" not in str(info.value)


def test_without_timm_the_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[timm\]"'):
        build("backbone=xception65")


def test_multi_grid_belongs_to_resnets() -> None:
    with pytest.raises(ConfigError, match=r"^backbone\.multi_grid: unknown key"):
        train_config(compose_config(["backbone=mobilenet_v2", "+backbone.multi_grid=[1,2,4]"]))
    model = build("backbone=resnet18", "backbone.multi_grid=[1,3]", "backbone.output_stride=8")
    assert [u.conv2.dilation[0] for u in model.backbone.layer4] == [4, 12]  # basic blocks: both 3x3 convs
    assert [u.conv1.dilation[0] for u in model.backbone.layer4] == [4, 12]
