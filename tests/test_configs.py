"""Config tree: every experiment composes and builds; model config mistakes name their key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, compose_config

from deeplab.errors import ConfigError
from deeplab.models import DeepLabV3Head, DeepLabV3PlusDecoder, build_model, validate_model_config

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def test_experiments_are_found() -> None:
    assert {"quickstart", "torchvision_deeplabv3_r50", "voc_aug_deeplabv3plus_r101_os16"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment: str) -> None:
    cfg = compose_config([f"experiment={experiment}", "backbone.pretrained=false", "model.pretrained=null"])
    settings = validate_model_config(cfg)
    with torch.device("meta"):  # the real constructors, without computing an initialisation
        model = build_model(cfg)
    assert model.output_stride == cfg.backbone.output_stride
    assert model.head.aspp.rates == list(settings.aspp_rates)
    assert isinstance(model.head, DeepLabV3PlusDecoder if cfg.model.decoder.enabled else DeepLabV3Head)
    assert model.head.classifier.out_channels == cfg.dataset.num_classes
    assert (model.aux_head is not None) == cfg.model.aux_head


def test_command_line_overrides_reach_the_model() -> None:
    cfg = compose_config(
        [
            "backbone=resnet101",
            "backbone.output_stride=8",
            "backbone.multi_grid=[1,2,1]",
            "model=deeplabv3plus",
        ]
    )
    cfg.backbone.pretrained = False
    with torch.device("meta"):
        model = build_model(cfg)
    assert len(model.backbone.layer3) == 23  # ResNet-101
    assert [unit.conv2.dilation[0] for unit in model.backbone.layer4] == [4, 8, 4]  # rate 4 x MG (1, 2, 1)
    assert model.head.aspp.rates == [12, 24, 36]  # rates null: the paper's defaults, doubled at OS 8
    assert isinstance(model.head, DeepLabV3PlusDecoder)
    assert model.head.reduce[0].out_channels == 48


def test_explicit_aspp_rates_and_options() -> None:
    cfg = compose_config(
        [
            "backbone=resnet50",
            "backbone.pretrained=false",
            "model=deeplabv3",
            "model.aspp.rates=[3,6,9,12]",
            "model.aspp.image_pooling=false",
            "model.aspp.separable=true",
        ]
    )
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.head.aspp.rates == [3, 6, 9, 12]
    assert len(model.head.aspp.convs) == 5  # 1x1 + four atrous branches, no pooling
    assert model.head.aspp.convs[1][0].groups == 2048  # depthwise


BAD_VALUES = [
    ("backbone.output_stride=32", "backbone.output_stride"),
    ("backbone.name=resnet18", "backbone.name"),
    ("model.aspp.rates=[a]", "model.aspp.rates"),
    ("model.aspp.rates=6", "model.aspp.rates"),
    ("model.aspp.rates=[6,0,18]", "model.aspp.rates"),
    ("model.aspp.rates=[]", "model.aspp.rates"),
    ("dataset.num_classes=-1", "dataset.num_classes"),
    ("dataset.num_classes=0", "dataset.num_classes"),
    ("backbone.multi_grid=[1,2]", "backbone.multi_grid"),
    ("backbone.multi_grid=[1,2,0]", "backbone.multi_grid"),
    ("backbone.dilation_style=caffe", "backbone.dilation_style"),
    ("backbone.weights=IMAGENET9K", "backbone.weights"),
    ("backbone.pretrained=3", "backbone.pretrained"),
    ("model.aspp.channels=0", "model.aspp.channels"),
    ("model.aspp.dropout=1.5", "model.aspp.dropout"),
    ("model.aspp.separable=maybe", "model.aspp.separable"),
    ("model.aux_head=2", "model.aux_head"),
    ("model.head_conv=true", "model.head_conv"),  # the default model is DeepLabv3+ (decoder on)
    ("model.decoder.low_level_channels=-48", "model.decoder.low_level_channels"),
    ("model.pretrained=5", "model.pretrained"),
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES)
def test_config_mistakes_name_the_key(override: str, key: str) -> None:
    cfg = compose_config([override])
    with pytest.raises(ConfigError) as err:
        build_model(cfg)
    message = str(err.value)
    assert key in message
    assert "\n" not in message


def test_unset_and_absent_keys_are_named() -> None:
    cfg = compose_config(["dataset=folder"])  # num_classes: ??? until the user sets it
    with pytest.raises(ConfigError, match=r"dataset\.num_classes is not set"):
        build_model(cfg)
    cfg = compose_config([])
    del cfg.backbone.dilation_style
    with pytest.raises(ConfigError, match=r"backbone\.dilation_style is missing"):
        build_model(cfg)


def test_optuna_search_example_maximises_what_train_py_returns() -> None:
    """hparams_search/voc_optuna.yaml (needs the optional Optuna sweeper) searches keys that exist."""
    from omegaconf import OmegaConf

    search = OmegaConf.load(Path(CONFIG_DIR) / "hparams_search" / "voc_optuna.yaml")
    assert search.hydra.sweeper.direction == "maximize"
    assert search.optimized_metric == "miou"  # a key of metrics.json, which train.py returns
    cfg = compose_config(["experiment=voc_aug_deeplabv3plus_r50_os16"])
    for key in search.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key
