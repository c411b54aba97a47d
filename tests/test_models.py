"""Models: output sizes, dilation rates, output-stride switching, ASPP and torchvision equivalence, weights."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.configs import compose_config
from helpers.torchvision_refs import TORCHVISION_DEEPLABS, perturb_batchnorm, torchvision_reference
from torch import nn
from torchvision.models import resnet50, resnet101
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from deeplab.errors import CheckpointError, ConfigError
from deeplab.models import (
    ASPP,
    DeepLab,
    DeepLabV3Head,
    DeepLabV3PlusDecoder,
    ResNetBackbone,
    build_model,
    convert_torchvision_state_dict,
)
from deeplab.models.resnet import resnet_tiny


def build(*overrides: str) -> DeepLab:
    return build_model(compose_config(["backbone.pretrained=false", *overrides]))


def conv_geometry(module: nn.Module) -> dict[str, tuple]:
    return {
        n: (m.stride, m.dilation, m.padding) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)
    }


# --- output sizes ------------------------------------------------------------------------------------------

# (batch, height, width, train mode) of the default cases; training needs batch >= 2 (BatchNorm on the 1x1
# image-pooling features), eval runs single images of odd sizes. R101 and OS 8 get the small inputs.
FAST_INPUTS = {
    ("resnet50", 16, "deeplabv3"): (2, 65, 65, True),
    ("resnet50", 16, "deeplabv3plus"): (2, 97, 97, True),
    ("resnet50", 8, "deeplabv3"): (1, 33, 47, False),
    ("resnet50", 8, "deeplabv3plus"): (2, 33, 33, True),
    ("resnet101", 16, "deeplabv3"): (2, 33, 33, True),
    ("resnet101", 16, "deeplabv3plus"): (1, 41, 33, False),
    ("resnet101", 8, "deeplabv3"): (1, 33, 47, False),
    ("resnet101", 8, "deeplabv3plus"): (2, 33, 33, True),
}
SHAPE_CASES = []
for (_backbone, _os, _model), _inputs in FAST_INPUTS.items():
    for _aux in (True, False):
        # Half the grid runs by default: every backbone x OS x head once, each head with and without aux
        # for each backbone. The other half is the same code path again (marked slow).
        fast = _aux == ((_model == "deeplabv3") != (_os == 8))
        marks = () if fast else (pytest.mark.slow,)
        inputs = _inputs if fast else (2, 65, 65, True)
        SHAPE_CASES.append(pytest.param(_backbone, _os, _model, _aux, inputs, marks=marks))


@pytest.mark.parametrize(("backbone", "os", "model_name", "aux", "inputs"), SHAPE_CASES)
def test_logits_have_the_input_size(
    backbone: str, os: int, model_name: str, aux: bool, inputs: tuple
) -> None:
    batch, height, width, train = inputs
    torch.manual_seed(0)
    model = build(
        f"backbone={backbone}", f"backbone.output_stride={os}", f"model={model_name}", f"model.aux_head={aux}"
    )
    assert model.output_stride == os
    assert isinstance(model.head, DeepLabV3PlusDecoder if model_name == "deeplabv3plus" else DeepLabV3Head)
    assert (model.aux_head is not None) == aux
    model.train(train)
    with torch.no_grad():
        result = model(torch.randn(batch, 3, height, width))
    # "aux" only while training with an aux head.
    assert set(result) == ({"out", "aux"} if aux and train else {"out"})
    for logits in result.values():
        assert logits.shape == (batch, 21, height, width)
        assert torch.isfinite(logits).all()


def test_binary_model_has_one_logit_channel() -> None:
    torch.manual_seed(0)
    model = build(
        "backbone=resnet50", "dataset.num_classes=1", "dataset.class_names=null", "model.aux_head=true"
    ).train()
    result = model(torch.randn(2, 3, 33, 33))
    assert result["out"].shape == (2, 1, 33, 33)
    assert result["aux"].shape == (2, 1, 33, 33)


# --- dilation ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnets() -> dict[str, nn.Module]:
    return {"resnet50": resnet50(), "resnet101": resnet101(), "resnet_tiny": resnet_tiny()}


def layer_geometry(layer: nn.Sequential) -> tuple[list[int], list[int]]:
    """(dilation of each unit's 3x3 conv, after checking padding == dilation), strides of the first unit."""
    rates = []
    for unit in layer:
        assert unit.conv2.kernel_size == (3, 3)
        assert unit.conv2.padding == unit.conv2.dilation
        assert unit.conv2.dilation[0] == unit.conv2.dilation[1]
        rates.append(unit.conv2.dilation[0])
    first = layer[0]
    strides = [first.conv2.stride[0], first.downsample[0].stride[0]]
    assert all(u.conv2.stride == (1, 1) for u in layer[1:])
    return rates, strides


# (output stride, multi-grid) -> (layer3 rate and first-unit stride, layer4 unit rates): arXiv 1706.05587
# Sec. 3.2: the rates of block4's units are the multi-grid times the block's rate (2 at OS 16, 4 at OS 8).
PAPER_RATES = {
    (16, (1, 2, 4)): (1, 2, [2, 4, 8]),
    (16, (1, 1, 1)): (1, 2, [2, 2, 2]),
    (16, (1, 2, 1)): (1, 2, [2, 4, 2]),
    (8, (1, 2, 4)): (2, 1, [4, 8, 16]),
    (8, (1, 1, 1)): (2, 1, [4, 4, 4]),
    (8, (1, 2, 1)): (2, 1, [4, 8, 4]),
}


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "resnet_tiny"])
@pytest.mark.parametrize(("os", "multi_grid"), list(PAPER_RATES))
def test_dilation_follows_the_paper(resnets, name: str, os: int, multi_grid: tuple) -> None:
    backbone = ResNetBackbone(resnets[name], os, multi_grid, "deeplab")
    layer3_rate, layer3_stride, layer4_rates = PAPER_RATES[(os, multi_grid)]
    rates3, strides3 = layer_geometry(backbone.layer3)
    rates4, strides4 = layer_geometry(backbone.layer4)
    assert rates3 == [layer3_rate] * len(backbone.layer3)
    assert strides3 == [layer3_stride, layer3_stride]
    assert rates4 == layer4_rates
    assert strides4 == [1, 1]
    # layer1 and layer2 are never dilated; layer2 always halves the resolution.
    assert layer_geometry(backbone.layer2) == ([1] * len(backbone.layer2), [2, 2])
    assert backbone.layer1[0].conv2.stride == (1, 1)


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
@pytest.mark.parametrize(("os", "replace"), [(8, [False, True, True]), (16, [False, False, True])])
def test_torchvision_dilation_style_equals_replace_stride_with_dilation(resnets, name, os, replace) -> None:
    ours = ResNetBackbone(resnets[name], os, (1, 1, 1), "torchvision")
    reference = {"resnet50": resnet50, "resnet101": resnet101}[name](replace_stride_with_dilation=replace)
    expected = {n: g for n, g in conv_geometry(reference).items() if not n.startswith("fc")}
    assert conv_geometry(ours) == expected
    if os == 8:  # the first unit keeps the previous layer's rate
        assert layer_geometry(ours.layer3)[0][:2] == [1, 2]
        assert layer_geometry(ours.layer4)[0] == [2, 4, 4]


def test_feature_strides() -> None:
    torch.manual_seed(0)
    backbone = ResNetBackbone(resnet50(), 16, (1, 2, 4)).eval()
    x = torch.randn(1, 3, 33, 33)  # 33 -> 17 (conv1) -> 9 (maxpool) -> 5 (layer2) -> 3 (layer3 at OS 16)
    with torch.no_grad():
        f16 = backbone(x)
        backbone.set_output_stride(8)
        f8 = backbone(x)
    assert f16["low"].shape == (1, backbone.low_channels, 9, 9) == f8["low"].shape
    assert f16["aux"].shape == (1, backbone.aux_channels, 3, 3)
    assert f16["out"].shape == (1, backbone.out_channels, 3, 3)
    assert f8["aux"].shape == (1, 1024, 5, 5)
    assert f8["out"].shape == (1, 2048, 5, 5)
    assert (backbone.low_channels, backbone.aux_channels, backbone.out_channels) == (256, 1024, 2048)


def test_tiny_backbone_has_resnet50s_strides_at_a_fraction_of_its_size() -> None:
    torch.manual_seed(0)
    backbone = ResNetBackbone(resnet_tiny(), 8, (1, 2, 4)).eval()
    assert (backbone.low_channels, backbone.aux_channels, backbone.out_channels) == (16, 64, 128)
    assert [len(getattr(backbone, f"layer{i}")) for i in (1, 2, 3, 4)] == [1, 1, 1, 3]
    assert sum(p.numel() for p in backbone.parameters()) < 150_000
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 33, 47))
    assert features["low"].shape[-2:] == (9, 12) and features["out"].shape[-2:] == (5, 6)  # strides 4 and 8
    for output_stride in (8, 16):
        for name in ("deeplabv3", "deeplabv3plus"):
            model = build("backbone=resnet_tiny", f"model={name}", f"backbone.output_stride={output_stride}",
                          "model.aspp.channels=16", "model.decoder.channels=16").eval()  # fmt: skip
            with torch.no_grad():
                assert model(torch.randn(1, 3, 35, 29))["out"].shape == (1, 21, 35, 29)


# --- set_output_stride -------------------------------------------------------------------------------------


def test_set_output_stride_keeps_weights_and_round_trips() -> None:
    torch.manual_seed(0)
    model = build("backbone=resnet50", "model=deeplabv3plus", "backbone.output_stride=16").eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    geometry16 = conv_geometry(model)
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        out16, features16 = model(x)["out"], model.backbone(x)["out"]
        model.set_output_stride(8)
        assert model.output_stride == 8
        assert model.head.aspp.rates == [12, 24, 36]
        out8, features8 = model(x)["out"], model.backbone(x)["out"]
        model.set_output_stride(16)
        out16_again = model(x)["out"]
    assert features16.shape[-2:] == (3, 3) and features8.shape[-2:] == (5, 5)
    assert out8.shape == out16.shape == (1, 21, 33, 33)
    assert not torch.allclose(out8, out16)  # the network really changed
    assert torch.equal(out16_again, out16)
    assert conv_geometry(model) == geometry16
    assert model.head.aspp.rates == [6, 12, 18]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_set_output_stride_equals_building_at_that_stride() -> None:
    with torch.device("meta"):  # structure only: no weights are computed
        switched = build("backbone=resnet101", "backbone.output_stride=16", "backbone.multi_grid=[1,2,4]")
        direct = build("backbone=resnet101", "backbone.output_stride=8", "backbone.multi_grid=[1,2,4]")
    switched.set_output_stride(8)
    assert conv_geometry(switched) == conv_geometry(direct)


def test_set_output_stride_rejects_bad_values() -> None:
    with torch.device("meta"):
        model = build("backbone=resnet50", "backbone.output_stride=8", "model.aspp.rates=[3,6,9]")
    with pytest.raises(ConfigError, match="output stride"):
        model.set_output_stride(32)
    with pytest.raises(ConfigError, match=r"\[3, 6, 9\]"):
        model.set_output_stride(16)  # 3 / 2 is not an integer rate
    assert model.output_stride == 8 and model.head.aspp.rates == [3, 6, 9]


# --- ASPP --------------------------------------------------------------------------------------------------


def test_aspp_matches_torchvision() -> None:
    torch.manual_seed(0)
    reference = TorchvisionASPP(64, (2, 4, 6), out_channels=32)
    perturb_batchnorm(reference)
    ours = ASPP(64, (2, 4, 6), out_channels=32, image_pooling=True, separable=False, dropout=0.5)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.eval(), ours.eval()
    x = torch.randn(2, 64, 9, 11)
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    assert got.shape == (2, 32, 9, 11)
    assert (got - expected).abs().max() < 1e-5


def test_separable_aspp_and_rate_rescaling() -> None:
    torch.manual_seed(0)
    c_in, c = 16, 8
    aspp = ASPP(c_in, (1, 2), out_channels=c, image_pooling=False, separable=True).eval()
    # 1x1 branch, two depthwise(3x3)+BN+pointwise(1x1)+BN branches, projection from 3 branches; no pooling.
    branch = c_in * 9 + 2 * c_in + c_in * c + 2 * c
    expected = (c_in * c + 2 * c) + 2 * branch + (3 * c * c + 2 * c)
    assert sum(p.numel() for p in aspp.parameters()) == expected
    assert aspp.convs[1][0].groups == c_in
    aspp.set_rates([3, 5])
    assert aspp.rates == [3, 5]
    assert aspp.convs[2][0].padding == (5, 5)
    assert aspp(torch.randn(1, c_in, 7, 6)).shape == (1, c, 7, 6)
    with pytest.raises(ConfigError):
        aspp.set_rates([3])


# --- torchvision's DeepLabv3 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_r50() -> tuple[nn.Module, Path]:
    return torchvision_reference("resnet50")


@pytest.mark.parametrize(
    "backbone",
    ["resnet50", pytest.param("resnet101", marks=pytest.mark.slow), "mobilenet_v3_large"],
)
def test_torchvision_deeplabv3_weights_give_the_same_logits(backbone: str) -> None:
    """torchvision's DeepLabV3 file, loaded with model.pretrained=FILE into our experiment reproducing it, gives
    its logits (main and auxiliary) with the same parameter count."""
    reference, path = torchvision_reference(backbone)
    _, experiment = TORCHVISION_DEEPLABS[backbone]
    model = build(f"experiment={experiment}", f"model.pretrained={path}").eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    x = 3 * torch.randn(2, 3, 67, 53, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        result = model(x)
        aux = F.interpolate(
            model.aux_head(model.backbone(x)["aux"]), size=(67, 53), mode="bilinear", align_corners=False
        )
    assert set(result) == {"out"}  # no aux output in eval mode
    assert (result["out"] - expected["out"]).abs().max() < 1e-4
    assert (aux - expected["aux"]).abs().max() < 1e-4
    assert expected["out"].abs().max() > 0.1  # the comparison is not between near-zero tensors


def test_converted_state_dict_loads_strictly(torchvision_r50) -> None:
    reference, _ = torchvision_r50
    with torch.device("meta"):
        model = build("experiment=torchvision_deeplabv3_r50")
    converted = convert_torchvision_state_dict(reference.state_dict())
    model.load_state_dict(converted, strict=True, assign=True)
    assert torch.equal(model.head.classifier.weight, reference.classifier[4].weight)
    assert torch.equal(model.head.conv[1].running_var, reference.classifier[2].running_var)
    assert torch.equal(model.aux_head[4].bias, reference.aux_classifier[4].bias)


def test_converter_rejects_foreign_keys() -> None:
    with pytest.raises(CheckpointError, match="decoder.weight"):
        convert_torchvision_state_dict({"decoder.weight": torch.zeros(1)})


def test_fine_tuning_from_torchvision_weights_skips_only_the_classifiers(torchvision_r50) -> None:
    reference, path = torchvision_r50
    torch.manual_seed(0)
    model = build(
        "experiment=torchvision_deeplabv3_r50",
        f"model.pretrained={path}",
        "dataset.num_classes=5",
        "dataset.class_names=null",  # VOC's 21 names do not fit 5 classes
        "model.aux_head=false",
    )
    assert model.head.classifier.weight.shape == (5, 256, 1, 1)
    assert model.aux_head is None
    ref = convert_torchvision_state_dict(reference.state_dict())
    for key, value in model.state_dict().items():
        if not key.startswith("head.classifier."):
            assert torch.equal(value, ref[key]), key


# --- backbone weights --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return resnet50().state_dict()  # includes fc.*, which the backbone ignores


@pytest.mark.parametrize("layout", ["raw", "nested_ddp"])
def test_backbone_weights_from_a_local_file(tmp_path, resnet50_state, layout: str) -> None:
    state = resnet50_state
    saved = {"raw": state, "nested_ddp": {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}}
    path = tmp_path / "resnet50.pth"
    torch.save(saved[layout], path)
    torch.manual_seed(2)
    model = build("backbone=resnet50", f"backbone.pretrained={path}")
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(v, state[k]) for k, v in loaded.items())


def test_backbone_weights_problems_name_the_file(tmp_path, resnet50_state) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(CheckpointError, match="backbone.pretrained") as err:
        build("backbone=resnet50", f"backbone.pretrained={missing}")
    assert str(missing) in str(err.value)

    state = dict(resnet50_state)
    del state["layer4.2.conv3.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(layer4\.2\.conv3\.weight\)") as err:
        build("backbone=resnet50", f"backbone.pretrained={path}")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def offline(monkeypatch, tmp_path) -> None:
    """An empty torch hub cache and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(url: str, *args, **kwargs) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_an_unknown_weights_name_is_one_line_before_any_download(offline) -> None:
    # Checked where the weights are loaded, so that validating a config does not import torchvision.
    with pytest.raises(
        ConfigError, match=r"^backbone\.weights must name torchvision's ResNet50_Weights weights"
    ):
        build("backbone=resnet50", "backbone.pretrained=true", "backbone.weights=IMAGENET9K")


def test_imagenet_download_failure_says_how_to_pass_a_local_file(offline) -> None:
    with pytest.raises(ConfigError) as err:
        build("backbone=resnet50", "backbone.pretrained=true", "backbone.weights=IMAGENET1K_V2")
    message = str(err.value)
    assert "backbone.pretrained=/path/to/resnet50-11ad3fa6.pth" in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "name resolution" in message and "\n" not in message
    assert "or train from random weights with backbone.pretrained=false" in message  # both fixes offered


def test_torchvision_deeplabv3_download_failure_says_how_to_pass_a_local_file(offline) -> None:
    with pytest.raises(
        ConfigError,
        match=r"model.pretrained=/path/to/deeplabv3_resnet101_coco-586e9e4e\.pth.*model\.pretrained=null",
    ):
        build("experiment=torchvision_deeplabv3_r101", "model.pretrained=torchvision")
