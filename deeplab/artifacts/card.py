"""The model card: what is needed to rebuild and use a trained model, and where it came from.

best.pt and last.pt carry it under "card"; the exported model folder holds it as config.json. It holds the
architecture (the model and backbone sections, the dataset's architecture keys), the data the model expects
(class names, colours, normalisation, channels, ignore index, overlay background, and the dataset section
evaluate.py scores it on) and its provenance (iterations, validation metrics, overrides, version, commit,
date). Loading reads the card and the weights only: no training-only section is validated, nothing is
downloaded (the weights come from the file).
"""

from __future__ import annotations

import datetime
import functools
import math
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deeplab.config import BackboneConfig, Color, DatasetConfig, ModelConfig, TrainConfig, validate
from deeplab.config.base import check_class_names
from deeplab.config.labels import palette  # the datasets' own colours (Cityscapes'), the VOC map otherwise
from deeplab.config.upgrade import upgrade_config
from deeplab.errors import CheckpointError, ConfigError
from deeplab.version import __version__

CARD_VERSION = 1


class Labels(BaseModel):
    """What a prediction means and how to draw it (also for readers that do not know the config schema)."""

    model_config = ConfigDict(extra="forbid")

    class_names: list[str]
    """One per predicted label: the classes, or background + the class for a binary model (num_classes 1)."""
    palette: list[Color]
    """[r, g, b] of each label."""
    overlay_background: list[int]
    """Labels an overlay leaves as the photo."""
    mean: list[float]
    std: list[float]
    ignore_index: int
    in_channels: int
    num_classes: int
    multilabel: bool = False
    """One sigmoid per class (several classes per pixel), instead of a softmax over them."""
    threshold: float = 0.5
    """With multilabel: the probability above which a pixel has a class."""

    @model_validator(mode="after")
    def _printable(self) -> Labels:
        check_class_names(self.class_names, "labels.class_names")
        return self


class Provenance(BaseModel):
    """Where the weights came from; unknown (null) for checkpoints written before the card existed."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    iteration: int | None = None
    metrics: dict[str, Any] | None = None
    """The validation metrics of the weights: pixel_acc, mean_acc, miou, fwiou, iou_per_class (null: absent)."""
    overrides: list[str] | None = None
    """The command-line overrides of the training run (`python train.py OVERRIDES`)."""
    version: str | None = None
    commit: str | None = None
    date: str | None = None
    amp: str | None = None
    """The trainer.amp setting the metrics were validated with (auto, bf16, fp16, off): evaluate.py and predict
    run with it when their own amp is auto, so that they give the training's metrics (null: not recorded, and
    they run in float32)."""
    channels_last: str | bool | None = None
    """The trainer.channels_last setting of the validation, likewise (its kernels round bf16 differently)."""


class ModelCard(BaseModel):
    """config.json of an exported model folder, "card" of a checkpoint."""

    model_config = ConfigDict(extra="forbid")

    card_version: Annotated[int, Field(ge=1, le=CARD_VERSION)] = CARD_VERSION
    model: ModelConfig
    backbone: BackboneConfig
    dataset: DatasetConfig
    """The training config's dataset section: the architecture keys (num_classes, in_channels), the data the
    model expects, and the validation split evaluate.py scores it on (its location may be overridden)."""
    labels: Labels
    provenance: Provenance

    @model_validator(mode="after")
    def _labels_agree(self) -> ModelCard:
        """labels is what readers without the schema use: it must say what the dataset section says, as the
        ONNX metadata check requires."""
        labels, d = self.labels, self.dataset
        names = d.label_names()
        for key, have, want in (("num_classes", labels.num_classes, d.num_classes),
                                ("in_channels", labels.in_channels, d.in_channels),
                                ("multilabel", labels.multilabel, d.multilabel)):  # fmt: skip
            if have != want:
                raise ConfigError(f"labels.{key} is {have} but dataset.{key} is {want}; make them agree")
        if len(labels.class_names) != len(names):
            raise ConfigError(
                f"labels.class_names has {len(labels.class_names)} names for the {len(names)} labels of the "
                f"dataset section ({names}); give one name per label"
            )
        if len(labels.palette) < len(names):
            raise ConfigError(
                f"labels.palette has {len(labels.palette)} colours for {len(names)} labels; give one [r, g, b] "
                "per label"
            )
        return self

    def output_stride(self) -> int:
        return self.backbone.output_stride


class _Rebuildable(BaseModel):
    """The sections of a training config a card is made from; the others (optim, trainer, loss, ...) are
    training-only and never read."""

    model_config = ConfigDict(extra="ignore")

    model: ModelConfig
    backbone: BackboneConfig
    dataset: DatasetConfig


@functools.lru_cache(maxsize=1)
def _commit() -> str | None:
    """The git commit of this checkout, when it is one."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _json_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Metrics with NaN (a class absent everywhere) as null, so that the card is strict JSON."""
    if metrics is None:
        return None

    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return {k: clean(v) for k, v in metrics.items()}


def make_card(
    config: TrainConfig | Mapping[str, Any],
    iteration: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    overrides: list[str] | None = None,
    stamp: bool = True,
) -> ModelCard:
    """The card of a training config (validated or plain; a plain one is upgraded and only its model, backbone
    and dataset sections are read). stamp=False: no version, commit and date (an older checkpoint's)."""

    if isinstance(config, TrainConfig):
        # Copies: the card must not change with the run's config (nor the config with the card).
        parts = _Rebuildable(
            model=config.model.model_copy(deep=True), backbone=config.backbone.model_copy(deep=True),
            dataset=config.dataset.model_copy(deep=True),
        )  # fmt: skip
        amp, channels_last = config.trainer.amp, config.trainer.channels_last
    else:
        plain = upgrade_config(config)
        parts = validate(_Rebuildable, {k: plain.get(k) for k in ("model", "backbone", "dataset")})  # type: ignore[arg-type]
        trainer = plain.get("trainer") if isinstance(plain.get("trainer"), Mapping) else {}
        amp, channels_last = trainer.get("amp"), trainer.get("channels_last")
        amp = "off" if amp is False else amp  # YAML's bare off
    d = parts.dataset
    names = d.label_names()
    labels = Labels(
        class_names=names, palette=palette(d)[: len(names)].tolist(), overlay_background=d.overlay_background_ids(),
        mean=list(d.mean), std=list(d.std), ignore_index=d.ignore_index, in_channels=d.in_channels,
        num_classes=d.num_classes, multilabel=d.multilabel, threshold=d.threshold,
    )  # fmt: skip
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    provenance = Provenance(
        dataset=d.name, iteration=iteration, metrics=_json_metrics(metrics), overrides=overrides,
        version=__version__ if stamp else None, commit=_commit() if stamp else None,
        date=now if stamp else None, amp=amp if stamp else None, channels_last=channels_last if stamp else None,
    )  # fmt: skip
    return ModelCard(
        model=parts.model, backbone=parts.backbone, dataset=d, labels=labels, provenance=provenance
    )


def read_card(obj: Mapping[str, Any], source: str | Path) -> ModelCard:
    """The card of a file: its own, checked; a mistake names the file."""
    data = dict(obj)
    if isinstance(data.get("dataset"), Mapping):
        data["dataset"] = upgrade_config({"dataset": data["dataset"]})["dataset"]
    try:
        return validate(ModelCard, data)  # type: ignore[arg-type]
    except ConfigError as e:
        raise CheckpointError(f"{source}: its model card cannot be used by this version ({e})") from None


def card_of_checkpoint(ckpt: Mapping[str, Any], path: str | Path) -> ModelCard:
    """The card a checkpoint carries, or (written before cards) the one made from its config."""
    if "card" in ckpt:
        return read_card(ckpt["card"], path)
    try:
        return make_card(ckpt["config"], ckpt.get("iteration"), ckpt.get("metrics"), stamp=False)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds a config this version cannot use ({e})") from None


def run_card(
    cfg: TrainConfig, run_dir: Path, iteration: int, metrics: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The card a checkpoint of a training run carries (plain types, as torch.load(weights_only=True) reads);
    the overrides are those Hydra recorded in the run dir."""
    import yaml

    overrides: list[str] | None = None
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if recorded.is_file():
        loaded = yaml.safe_load(recorded.read_text())
        overrides = [str(o) for o in loaded] if isinstance(loaded, list) else None
    return make_card(cfg, iteration, metrics, overrides).model_dump(mode="json")
