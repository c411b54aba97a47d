"""The config schema and tree: every experiment composes and builds, experiments hold only deltas, and every
mistake stops the run at start-up with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.configs import CONFIG_DIR, compose_config, tiny_config
from helpers.processes import run_cli
from omegaconf import OmegaConf
from pydantic import ValidationError

import deeplab.train.engine as engine
from deeplab import data
from deeplab.config import evaluate_config, predict_config, train_config
from deeplab.errors import ConfigError
from deeplab.models import DeepLabV3Head, DeepLabV3PlusDecoder, build_model

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def test_experiments_are_found() -> None:
    assert {"quickstart", "tiny", "torchvision_deeplabv3_r50", "voc_aug_deeplabv3plus_r101_os16"} <= set(
        EXPERIMENTS
    )


FOLDERS = [f"dataset.{s}.{k}=x" for s in ("train", "val") for k in ("images", "masks")]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment: str) -> None:
    overrides = [f"experiment={experiment}", "backbone.pretrained=false"]
    if compose_config(overrides).dataset.name == "folder":  # the user's folders and classes
        overrides += [*FOLDERS, "dataset.num_classes=3"]
    if compose_config(overrides).trainer.freeze_bn:  # a second stage: the first stage's weights
        overrides += ["model.init_from=first_stage.pt"]
    cfg = train_config(compose_config(overrides))
    with torch.device("meta"):  # the real constructors, without computing an initialisation
        model = build_model(cfg)
    assert model.output_stride == cfg.backbone.output_stride
    assert model.head.aspp.rates == cfg.aspp_rates()
    assert isinstance(model.head, DeepLabV3PlusDecoder if cfg.model.decoder.enabled else DeepLabV3Head)
    assert model.head.classifier.out_channels == cfg.dataset.num_classes
    assert (model.aux_head is not None) == cfg.model.aux_head


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: node}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_state_only_what_differs_from_their_defaults(experiment: str) -> None:
    """An experiment's group choices and values all differ from what train.yaml would give without them."""
    body = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "experiment" / f"{experiment}.yaml"))
    choices = []
    for entry in body.pop("defaults", []):
        if isinstance(entry, dict):
            [(key, value)] = entry.items()
            if key.startswith("override /"):
                group = key.removeprefix("override /")
                default = OmegaConf.load(Path(CONFIG_DIR) / "train.yaml").defaults
                assert {group: value} not in default, f"{experiment} restates the default {group}={value}"
                choices.append(f"{group}={value}")
        else:  # another experiment it extends
            choices.append(f"experiment={entry}")
    base = OmegaConf.to_container(compose_config(choices), resolve=False)
    base_leaves = _leaves(base)
    for key, value in _leaves(body).items():
        assert key in base_leaves, f"{experiment} sets {key}, which is not a key of the config"
        assert base_leaves[key] != value, f"{experiment} restates {key}={value}, the value it has anyway"


# The mistakes a user makes, each stopped before any data is listed or any model built.
BAD = [
    ("backbone.output_stride=32", "backbone.output_stride"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("model.aspp.rates=[6,x]", "model.aspp.rates"),
    ("dataset.num_classes=-1", "dataset.num_classes"),
    ("dataset.num_classes=abc", "dataset.num_classes"),
    ("optim.lr=-0.1", "optim.lr"),
    ("trainer.crop_size=abc", "trainer.crop_size"),
    ("eval.mode=foo", "eval.mode"),
    ("eval.scales=[0]", "eval.scales"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("backbone.multi_grid=[1,2]", "backbone.multi_grid"),
    ("dataset.augment.scale=[2.0,0.5]", "dataset.augment.scale"),
    ("trainer.max_iters=1.5", "trainer.max_iters"),
    ("trainer.amp=fp8", "trainer.amp"),
    ("trainer.num_workers=-1", "trainer.num_workers"),
    ("dataset.std=[0,0,0]", "dataset.std"),
    ("dataset.ignore_index=-1", "dataset.ignore_index"),
    ("loss.aux_weight=-1", "loss.aux_weight"),
    ("+trainer.max_iter=5", "trainer.max_iter"),
    # and more of the same kind
    ("trainer.max_iters=0", "trainer.max_iters"),
    ("dataset.ignore_index=300", "dataset.ignore_index"),
    ("backbone.name=resnet152", "backbone.name"),
    ("backbone.multi_grid=[1,2,4,8]", "backbone.multi_grid"),
    ("model.aspp.rates=6", "model.aspp.rates"),
    ("model.aspp.rates=[6,0,18]", "model.aspp.rates"),
    ("model.aspp.rates=[]", "model.aspp.rates"),
    ("dataset.num_classes=0", "dataset.num_classes"),
    ("backbone.multi_grid=[1,2,0]", "backbone.multi_grid"),
    ("backbone.dilation_style=caffe", "backbone.dilation_style"),
    ("backbone.pretrained=3", "backbone.pretrained"),
    ("model.aspp.channels=0", "model.aspp.channels"),
    ("model.aspp.dropout=1.5", "model.aspp.dropout"),
    ("model.aspp.separable=maybe", "model.aspp.separable"),
    ("model.aux_head=2", "model.aux_head"),
    ("model.head_conv=true", "model.head_conv"),  # the tiny model is DeepLabv3+ (decoder on)
    ("model.decoder.low_level_channels=-48", "model.decoder.low_level_channels"),
    ("model.pretrained=5", "model.pretrained"),
    ("model.decoder.enabled=false", "model.decoder.enabled"),
    ("trainer.channels_last=maybe", "trainer.channels_last"),
    ("trainer.device=gpu", "trainer.device"),
    ("optim.momentum=-1", "optim.momentum"),
    ("schedule.warmup_iters=4", "schedule.warmup_iters"),  # the tiny run has 4 iterations
    ("schedule.warmup_factor=0", "schedule.warmup_factor"),
    ("dataset.name=foo", "dataset.name"),
    ("dataset.class_names=[background,disc]", "dataset.class_names"),
    ("dataset.mean=[0.5,0.5]", "dataset.mean"),
    ("logger.num_images=-2", "logger.num_images"),
    ("+model.aspp.rate=[1]", "model.aspp.rate"),
    ("+extra=1", "extra"),
    ("optim.lr=0", "optim.lr"),
    ("optim.head_lr_mult=-1", "optim.head_lr_mult"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("schedule.power=0", "schedule.power"),
]


@pytest.mark.parametrize(("override", "key"), BAD, ids=[b[0] for b in BAD])
def test_mistakes_stop_at_start_up_naming_the_key(override, key, tiny_data, tmp_path, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("data was listed or a model built before the config was checked")

    monkeypatch.setattr(data, "build_dataset", fail)
    monkeypatch.setattr(engine, "build_model", fail)
    with pytest.raises(ConfigError) as info:
        engine.train(tiny_config(tiny_data, **dict([override.split("=", 1)])), tmp_path / "run")
    message = str(info.value)
    assert message.startswith(key) and "\n" not in message, message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["backbone.pretrained=true"], r"^backbone\.pretrained: resnet_tiny has no published weights"),
        (["model.pretrained=torchvision"], r"^model\.pretrained: torchvision publishes DeepLabV3 weights for"),
        (["optim.nesterov=true", "optim.momentum=0"], r"^optim\.nesterov=true needs optim\.momentum > 0"),
        (["dataset.class_names=[background,disc,hexagon,square]"], r"^dataset\.class_names: 'hexagon' is not a shape"),
    ],
)  # fmt: skip
def test_cross_field_mistakes_name_the_key(overrides, message, tiny_data) -> None:
    with pytest.raises(ConfigError, match=message):
        train_config(tiny_config(tiny_data, **dict(o.split("=", 1) for o in overrides)))


@pytest.mark.parametrize(
    ("palette", "message"),
    [
        ("[[0,0,0],[0,0,0]]", r"^dataset\.palette \(with dataset\.ignore_color\) lists a colour twice"),
        (
            "[[0,0,0],[1,1,1],[2,2,2]]",
            r"^dataset\.palette has 3 colours, more than dataset\.num_classes \(2\)",
        ),
        ("[[0,0,300],[1,1,1]]", r"^dataset\.palette\[0\]\[2\]: input should be less than or equal to 255"),
        ("[[0,0],[1,1,1]]", r"^dataset\.palette\[0\]: list should have at least 3 items"),
    ],
)
def test_folder_palette_mistakes(palette, message) -> None:
    cfg = compose_config(["dataset=folder", *FOLDERS, "dataset.num_classes=2", f"dataset.palette={palette}",
                          "dataset.ignore_index=1"])  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        train_config(cfg)


def test_a_misspelt_key_gets_a_suggestion() -> None:
    with pytest.raises(
        ConfigError, match=r"trainer\.max_iter: unknown key; did you mean trainer\.max_iters\?"
    ):
        train_config(compose_config(["+trainer.max_iter=5"]))


def test_unset_and_absent_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.train\.images is not set; give it on the command line"):
        train_config(compose_config(["dataset=folder"]))
    cfg = compose_config([])
    del cfg.backbone.dilation_style
    with pytest.raises(ConfigError, match=r"backbone\.dilation_style is missing from the config"):
        train_config(cfg)
    with pytest.raises(ConfigError, match=r"^checkpoint is not set"):
        evaluate_config(compose_config([], "evaluate"))
    with pytest.raises(ConfigError, match=r"^eval\.overlap: input should be less than 1"):
        evaluate_config(compose_config(["checkpoint=x.pt", "eval.overlap=1"], "evaluate"))
    with pytest.raises(ConfigError, match=r"^alpha: input should be less than or equal to 1"):
        predict_config(compose_config(["checkpoint=x.pt", "input=a", "output=b", "alpha=2"], "predict"))


def test_validated_config_is_typed_and_complete(tiny_data) -> None:
    cfg = train_config(tiny_config(tiny_data, **{"trainer.amp": "off"}))
    assert cfg.trainer.amp == "off"  # YAML reads a bare off as false
    assert cfg.aspp_rates() == [6, 12, 18] and cfg.dataset.names() == [
        "background",
        "disc",
        "square",
        "triangle",
    ]
    assert train_config(cfg.model_dump()) == cfg  # what a checkpoint stores validates back to the same config
    with pytest.raises(ValidationError, match="batch_size"):
        cfg.trainer.batch_size = 0  # assignments in the code are checked too


def test_train_py_reports_a_mistake_in_one_line_with_exit_2(tmp_path) -> None:
    proc = run_cli(
        "train.py", "experiment=tiny", "trainer.crop_size=abc", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "error: trainer.crop_size: input should be a valid integer, got 'abc'"
    )
    assert "Traceback" not in proc.stderr


def test_command_line_overrides_reach_the_model() -> None:
    cfg = compose_config(
        ["backbone.output_stride=8", "backbone.multi_grid=[1,2,1]", "backbone.pretrained=false"]
    )
    with torch.device("meta"):
        model = build_model(cfg)
    assert len(model.backbone.layer3) == 23  # ResNet-101, the default
    assert [unit.conv2.dilation[0] for unit in model.backbone.layer4] == [4, 8, 4]  # rate 4 x MG (1, 2, 1)
    assert model.head.aspp.rates == [12, 24, 36]  # rates null: the paper's defaults, doubled at OS 8
    assert isinstance(model.head, DeepLabV3PlusDecoder)
    assert model.head.reduce[0].out_channels == 48


def test_explicit_aspp_rates_and_options() -> None:
    cfg = compose_config(
        ["backbone=resnet50", "backbone.pretrained=false", "model=deeplabv3", "model.aspp.rates=[3,6,9,12]",
         "model.aspp.image_pooling=false", "model.aspp.separable=true"]
    )  # fmt: skip
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.head.aspp.rates == [3, 6, 9, 12]
    assert len(model.head.aspp.convs) == 5  # 1x1 + four atrous branches, no pooling
    assert model.head.aspp.convs[1][0].groups == 2048  # depthwise


def test_optuna_search_example_maximises_what_train_py_returns() -> None:
    """hparams_search/voc_optuna.yaml (needs the optional Optuna sweeper) searches keys that exist."""
    search = OmegaConf.load(Path(CONFIG_DIR) / "hparams_search" / "voc_optuna.yaml")
    assert search.hydra.sweeper.direction == "maximize"
    assert search.optimized_metric == "miou"  # a key of metrics.json, which train.py returns
    cfg = compose_config(["experiment=voc_aug_deeplabv3plus_r50_os16"])
    for key in search.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key


@pytest.mark.parametrize(
    "option",
    sorted(
        str(p.relative_to(CONFIG_DIR))[:-5]
        for p in Path(CONFIG_DIR).glob("*/*.yaml")
        if "???" in p.read_text()
    ),
)
def test_an_unset_value_of_an_option_stays_unset(option: str) -> None:
    """`???` in an option that extends another would keep the base's value when merged: an unset folder or timm
    model would silently become the base's."""
    group, name = option.split("/")
    if group == "experiment":
        pytest.skip("experiments hold deltas")
    with pytest.raises(ConfigError, match="is not set"):
        train_config(compose_config([f"{group}={name}"]))


def test_the_readme_error_examples_are_the_real_messages() -> None:
    """Each `$ python train.py ...` example of the docs is followed by the line train.py prints: the
    schema's message, or the one line deeplab.cli makes of Hydra's composition error."""
    from deeplab.cli import composition_error, unset_keys
    from deeplab.config import config_dir

    pages = [Path(CONFIG_DIR).parent / "README.md", *sorted((Path(CONFIG_DIR).parent / "docs").glob("*.md"))]
    readme = [line for page in pages for line in page.read_text().splitlines()]
    examples = [
        (line.removeprefix("$ python train.py ").split(), readme[k + 1].removeprefix("error: "))
        for k, line in enumerate(readme)
        if line.startswith("$ python train.py ")
    ]
    assert len(examples) >= 4
    for overrides, message in examples:
        try:
            train_config(compose_config(overrides))
        except ConfigError as e:
            got = str(e)
        except Exception as e:  # Hydra's composition errors, as train.py reports them
            got = composition_error(e, unset_keys(config_dir() / "train.yaml", overrides), config_dir())
        else:
            got = None
        assert got == message
