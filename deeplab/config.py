"""The config schema: every key of configs/ typed, documented and checked here, once.

Hydra composes the YAML files of configs/ (they hold the default values); right after composition the
entry points turn the DictConfig into these typed models with `train_config`, `evaluate_config` or
`predict_config`. That happens before any data is listed or any model is built. A mistake (a wrong type, a
value out of range, an unknown key, also one appended with `+`) raises ConfigError with one line naming the
key; the code after validation reads typed values and casts nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from deeplab.errors import ConfigError, first_line
from deeplab.roles import ARCHITECTURE, DATA, LOCATION, OPTIMISER, WEIGHTS, Added, key_roles, keys_with  # noqa: I001

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Label = Annotated[int, Field(ge=0, le=255)]
Channel = Annotated[int, Field(ge=0, le=255)]
Color = Annotated[list[Channel], Field(min_length=3, max_length=3)]
MetricName = Literal["miou", "pixel_acc", "mean_acc", "fwiou"]

OUTPUT_STRIDES = (8, 16)
TORCHVISION_DEEPLABS = ("resnet50", "resnet101", "mobilenet_v3_large")  # backbones of its DeepLabV3 weights


class Section(BaseModel):
    """A config node: strict types (no "5" for 5, no 1 for true), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def _flag_or_path(flags: tuple[Any, ...], words: str) -> BeforeValidator:
    """A value that is one of `flags` (matched by identity for true/false/null) or a non-empty path."""

    def check(value: Any) -> Any:
        if any(value is f for f in flags if f is None or isinstance(f, bool)) or value in [
            f for f in flags if isinstance(f, str)
        ]:
            return value
        if isinstance(value, str) and value:
            return value
        raise ValueError(f"must be {words} or a path to a file")

    return BeforeValidator(check)


def _auto_or_bool(value: Any) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError("must be auto, true or false")


def _device(value: Any) -> Any:
    if isinstance(value, str):
        kind, _, index = value.partition(":")
        if value in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and index.isdigit()):
            return value
    raise ValueError("must be auto, cpu, cuda, cuda:N or mps")


# YAML reads a bare `off` as false.
Amp = Annotated[Literal["auto", "bf16", "fp16", "off"], BeforeValidator(lambda v: "off" if v is False else v)]
"""auto: bf16 on CUDA, off (full precision) on the CPU."""
Flag = Annotated[Literal["auto"] | bool, BeforeValidator(_auto_or_bool)]
"""auto: on with CUDA, off on the CPU."""
Device = Annotated[str, BeforeValidator(_device)]


# ----------------------------------------------------------------------------- model


Pretrained = Annotated[bool | str, _flag_or_path((True, False), "true, false")]


class TorchvisionBackbone(Section):
    """A torchvision network; `weights` names its ImageNet weights."""

    output_stride: Literal[8, 16]
    """16: the last stage dilated; 8: the last two stages dilated (arXiv 1706.05587 Sec. 3.1)."""
    pretrained: Annotated[Pretrained, WEIGHTS]
    """true: torchvision's ImageNet weights (`weights`); false: random; a path: a local state dict of the
    torchvision network."""
    weights: Annotated[str, WEIGHTS]
    """Member of the network's torchvision weights enum (ResNet50_Weights, MobileNet_V2_Weights, ...), checked
    when the weights are loaded (deeplab.models.pretrained.imagenet_weights)."""

    @model_validator(mode="after")
    def _weights(self) -> TorchvisionBackbone:
        name = getattr(self, "name", "")
        if self.pretrained is True and name == "resnet_tiny":
            raise ConfigError("backbone.pretrained: resnet_tiny has no published weights; set it to false")
        return self


class ResNetConfig(TorchvisionBackbone):
    """configs/backbone/resnet*: torchvision ResNets (bottleneck 50/101, basic blocks 18/34, the tiny test one)."""

    name: Literal["resnet_tiny", "resnet18", "resnet34", "resnet50", "resnet101"]
    multi_grid: Annotated[list[PositiveInt], Field(min_length=2, max_length=3)]
    """Multiplies the rates of layer4's units (DeepLabv3, Sec. 3.2): [1, 2, 4] gives 2, 4, 8 at OS 16.
    One value per layer4 unit: three, two for ResNet-18."""
    dilation_style: Literal["deeplab", "torchvision"]
    """deeplab: every unit of a dilated layer uses its rate; torchvision: the first unit keeps the previous one."""

    @model_validator(mode="after")
    def _multi_grid(self) -> ResNetConfig:
        units = 2 if self.name == "resnet18" else 3
        if len(self.multi_grid) != units:
            raise ConfigError(
                f"backbone.multi_grid needs {units} values for {self.name} (one per layer4 unit), got "
                f"{self.multi_grid}"
            )
        return self


class MobileNetConfig(TorchvisionBackbone):
    """configs/backbone/mobilenet_*: torchvision's MobileNetV2 and MobileNetV3-Large (no multi-grid)."""

    name: Literal["mobilenet_v2", "mobilenet_v3_large"]


class TimmConfig(Section):
    """configs/backbone/xception65 and timm: encoders of the timm library (pip install -e ".[timm]")."""

    name: Literal["xception65", "timm"]
    model: str
    """timm's model name (for backbone=timm; xception65 is the DeepLabv3+ paper's aligned Xception-65)."""
    output_stride: Literal[8, 16]
    pretrained: Annotated[Pretrained, WEIGHTS]
    """true: timm's ImageNet weights (from the Hugging Face hub); false: random; a path: a local
    .safetensors or .pth file of that model."""


BackboneConfig = Annotated[ResNetConfig | MobileNetConfig | TimmConfig, Field(discriminator="name")]


class ASPPConfig(Section):
    rates: Annotated[list[PositiveInt], Field(min_length=1)] | None
    """Atrous rates at the training output stride; null: (6, 12, 18) at OS 16, (12, 24, 36) at OS 8."""
    channels: PositiveInt
    image_pooling: bool
    separable: bool
    """Depthwise-separable atrous convolutions (DeepLabv3+ paper, Sec. 3.1)."""
    dropout: Annotated[float, Field(ge=0, lt=1)]


class DecoderConfig(Section):
    enabled: bool
    """The DeepLabv3+ decoder on stride-4 features; true exactly for model=deeplabv3plus."""
    low_level_channels: PositiveInt
    """Channels the stride-4 features are reduced to (48 in the paper, Table 1)."""
    channels: PositiveInt
    separable: bool


class ModelConfig(Section):
    """configs/model: the head on the backbone."""

    name: Literal["deeplabv3", "deeplabv3plus"]
    aspp: ASPPConfig
    head_conv: bool
    """The extra 3x3 conv + BN + ReLU after ASPP that torchvision's DeepLabHead has."""
    decoder: DecoderConfig
    aux_head: bool
    """Auxiliary FCN head on layer3, trained with loss.aux_weight (training only)."""
    pretrained: Annotated[str | None, _flag_or_path((None, "torchvision"), "null, torchvision"), WEIGHTS]
    """null; torchvision (its published COCO/VOC-label DeepLabV3 weights); or a path to that .pth file."""
    init_from: Annotated[str | None, WEIGHTS, Added(None)]
    """A new run's starting weights: one of our checkpoints (.pt) or torchvision's DeepLabV3 .pth, any class
    count. Every tensor whose name and shape fit is loaded, the rest keep their initialisation (one log line
    lists them). Not a resume: the optimiser and the iteration start afresh."""

    @model_validator(mode="after")
    def _head(self) -> ModelConfig:
        if self.decoder.enabled != (self.name == "deeplabv3plus"):
            want = "deeplabv3plus" if self.decoder.enabled else "deeplabv3"
            raise ConfigError(
                f"model.decoder.enabled={str(self.decoder.enabled).lower()} does not match model.name="
                f"{self.name}; choose the head with model={want}"
            )
        if self.head_conv and self.decoder.enabled:
            raise ConfigError(
                "model.head_conv (the extra 3x3 conv of torchvision's DeepLabv3 head) cannot be used with "
                "the DeepLabv3+ decoder; set model.head_conv=false or use model=deeplabv3"
            )
        if self.init_from is not None and self.pretrained is not None:
            raise ConfigError(
                "model.init_from and model.pretrained both give the starting weights; set one of them"
            )
        return self


def default_aspp_rates(output_stride: int) -> list[int]:
    """The papers' ASPP rates: (6, 12, 18) at output stride 16, doubled at 8 (arXiv 1706.05587 Sec. 3.3)."""
    return [r * 16 // output_stride for r in (6, 12, 18)]


# ----------------------------------------------------------------------------- data


def overlay_background_ids(names: list[str], chosen: list[str] | None) -> list[int]:
    """Ids of the classes `chosen` by name, or (None) of the class named background if there is one: the
    classes an overlay leaves as the photo (also for ONNX files, whose metadata may predate the key)."""
    if chosen is None:
        return [i for i, n in enumerate(names) if n.lower() == "background"]
    return [i for i, n in enumerate(names) if n in chosen]


class AugmentConfig(Section):
    """The train pipeline: random scale, pad with the mean / ignore index, random crop, flip, jitter."""

    scale: Annotated[list[PositiveFloat], Field(min_length=2, max_length=2)]
    """[lo, hi] of the random scale (0.5, 2.0 in the papers)."""
    hflip: bool
    color_jitter: NonNegativeFloat

    @model_validator(mode="after")
    def _range(self) -> AugmentConfig:
        if self.scale[0] > self.scale[1]:
            raise ConfigError(f"dataset.augment.scale must be [lo, hi] with lo <= hi, got {self.scale}")
        return self


class DatasetBase(Section):
    """Keys every dataset has (configs/dataset/common.yaml)."""

    num_classes: Annotated[int, Field(ge=1, le=256), ARCHITECTURE]
    """Number of classes, the ignore label not counted; 1 = binary (one logit channel, BCE)."""
    ignore_index: Label
    """The label the loss and the metrics skip, and the mask padding: 255, or a class id (CamVid: 11)."""
    class_names: list[str] | None
    """One name per class (configs/dataset/ lists the official datasets'); null: foreground for one class,
    class_0, class_1, ... otherwise."""
    palette: list[Color] | None
    """[r, g, b] of each class for drawing (and, for dataset=folder, to read colour-coded masks)."""
    overlay_background: Annotated[list[str] | None, Added(None)]
    """Classes an overlay (deeplab.predict) leaves as the photo, by name: null = the class named `background`
    if there is one, else none (CamVid's class 0 is sky: it is tinted); [] = none."""
    in_channels: Annotated[int, Field(ge=1, le=64), ARCHITECTURE, Added(3)]
    """Channels of the input images: 3 (RGB), or others for dataset=folder (multi-page TIFF, .npy, RGBA)."""
    mean: Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=1)]
    """Per channel, in [0, 1] pixel units (ImageNet's for RGB)."""
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)]
    augment: AugmentConfig
    skip_bad: Annotated[bool, LOCATION]
    """true: a corrupt training sample is skipped with a warning (and counted), a corrupt validation sample
    left out of the metrics, instead of stopping the run."""
    check_labels: bool
    """Scan the training masks at start-up (cached per dataset) and stop when a class has no pixel in any
    of them, or when they hold only 0 and the ignore index (binary masks stored as 0/255)."""
    sampler: Annotated[Literal["random", "rare_class"], Added("random")]
    """The training order: random (each image once per epoch), or rare_class (a class c drawn with probability
    proportional to exp((1 - f_c) / T), f_c its share of the training pixels, then an image holding it)."""
    sampler_temperature: Annotated[PositiveFloat, Added(0.01)]
    """T of sampler=rare_class: lower draws the rare classes more often (0.01, DAFormer's)."""

    @model_validator(mode="after")
    def _channels(self) -> DatasetBase:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) != self.in_channels:
                raise ConfigError(
                    f"dataset.{key} has {len(values)} values but dataset.in_channels is {self.in_channels}; "
                    "give one per channel"
                )
        if self.in_channels != 3:
            if getattr(self, "name", "folder") != "folder":
                raise ConfigError(
                    f"dataset.in_channels={self.in_channels}: {getattr(self, 'name', '')} images are RGB; other "
                    "channel counts are read by dataset=folder"
                )
            if self.augment.color_jitter > 0:
                raise ConfigError(
                    "dataset.augment.color_jitter works on RGB images; set it to 0 when dataset.in_channels is not 3"
                )
        return self

    @model_validator(mode="after")
    def _names(self) -> DatasetBase:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"dataset.class_names has {len(self.class_names)} names but dataset.num_classes is "
                f"{self.num_classes}; give {self.num_classes} names, or dataset.class_names=null for class_0, "
                "class_1, ..."
            )
        return self

    @model_validator(mode="after")
    def _overlay_background(self) -> DatasetBase:
        if self.overlay_background is not None:
            names = self.label_names()
            unknown = [n for n in self.overlay_background if n not in names]
            if unknown:
                raise ConfigError(
                    f"dataset.overlay_background: {unknown[0]!r} is not a class name; choose from {names} "
                    "(dataset.class_names), or [] for none"
                )
        return self

    def overlay_background_ids(self) -> list[int]:
        """Ids of the classes an overlay leaves as the photo (dataset.overlay_background)."""
        return overlay_background_ids(self.label_names(), self.overlay_background)

    def names(self) -> list[str]:
        """Class names, one per class (for one class, the foreground's name). The dataset files in
        configs/dataset/ give the official datasets' names; without dataset.class_names, generic ones."""
        if self.class_names is not None:
            return list(self.class_names)
        if self.num_classes == 1:  # a binary model: background (logit < 0) and this class
            return ["foreground"]
        return [f"class_{i}" for i in range(self.num_classes)]

    def mean_pixel(self) -> tuple[int, ...]:
        """The mean colour in pixel values, one per channel (what evaluation batches are padded with)."""
        return tuple(round(m * 255) for m in self.mean)

    def label_names(self) -> list[str]:
        """Names of the predicted labels: the classes, or background + the class for a binary model."""
        names = self.names()
        return ["background", names[0]] if self.num_classes == 1 else names


class SplitLayout(DatasetBase):
    """A dataset in an official layout under root, with named splits (VOC's split lists, Cityscapes' and
    ADE20K's split folders)."""

    root: Annotated[str, LOCATION]
    train_split: str
    """The split trained on (VOC: a list of ImageSets/Segmentation; Cityscapes, ADE20K: a folder)."""
    val_split: Annotated[str, LOCATION]


class VOCDataset(SplitLayout):
    """Pascal VOC 2012 segmentation (train 1,464 / val 1,449)."""

    name: Literal["voc"]


class SBDDataset(SplitLayout):
    """SBD's class segmentations (train 8,498 / val 2,857)."""

    name: Literal["sbd"]
    sbd_root: Annotated[str | None, LOCATION]
    """benchmark_RELEASE when it is not under root."""


class VOCAugDataset(SplitLayout):
    """trainaug: VOC train + SBD train/val - VOC val (10,582 images), validated on VOC val."""

    name: Literal["voc_aug"]
    sbd_root: Annotated[str | None, LOCATION]
    aug_list: Annotated[str | None, LOCATION]
    """An explicit trainaug id list (one id per line) instead of the one derived from VOC and SBD."""


SHAPES = ("disc", "square", "triangle", "ring", "cross", "star")
"""The shapes the synthetic generator draws (here so that checking a config does not import torch)."""


class SyntheticDataset(SplitLayout):
    """Generated once under root in the VOC layout: textured shapes on cluttered backgrounds."""

    name: Literal["synthetic"]
    num_train: PositiveInt
    num_val: PositiveInt
    image_size: Annotated[list[Annotated[int, Field(ge=16)]], Field(min_length=2, max_length=2)]
    """[height, width] of the generated images."""
    seed: int

    @model_validator(mode="after")
    def _shapes(self) -> SyntheticDataset:
        names = self.names()
        unknown = [n for n in names[1:] if n not in SHAPES]
        if unknown:
            raise ConfigError(
                f"dataset.class_names: {unknown[0]!r} is not a shape the generator draws; use names from "
                f"{', '.join(SHAPES)} after the background"
            )
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError("dataset.class_names needs a background and at least one distinct shape")
        return self


class FolderSplit(Section):
    images: str
    masks: str


class FolderDataset(DatasetBase):
    """Your own data: per split an images folder and a masks folder, matched by file stem."""

    name: Literal["folder"]
    train: Annotated[FolderSplit, LOCATION]
    val: Annotated[FolderSplit, LOCATION]
    ignore_color: Color | None
    """[r, g, b] of ignored pixels in colour-coded masks (they become ignore_index)."""
    binary_values: (
        Annotated[list[Annotated[int, Field(ge=0, le=65535)]], Field(min_length=2, max_length=2)] | None
    )
    """[background, foreground] pixel values of binary masks, e.g. [0, 255]: they become classes 0 and 1."""

    @model_validator(mode="after")
    def _binary(self) -> FolderDataset:
        if self.binary_values is not None:
            if self.num_classes > 2:
                raise ConfigError(
                    f"dataset.binary_values is for binary masks (dataset.num_classes 1 or 2), but "
                    f"dataset.num_classes is {self.num_classes}"
                )
            if self.binary_values[0] == self.binary_values[1]:
                raise ConfigError(
                    f"dataset.binary_values must be two different values, got {self.binary_values}"
                )
            if self.palette is not None:
                raise ConfigError(
                    "dataset.binary_values and dataset.palette exclude each other; set one of them"
                )
        return self

    @model_validator(mode="after")
    def _palette(self) -> FolderDataset:
        if self.palette is not None:
            colors = [tuple(c) for c in self.palette]
            if self.ignore_color is not None:
                colors.append(tuple(self.ignore_color))
            if len(set(colors)) != len(colors):
                raise ConfigError(
                    "dataset.palette (with dataset.ignore_color) lists a colour twice; colours must be unique"
                )
            if len(self.palette) > max(self.num_classes, self.ignore_index + 1):
                raise ConfigError(
                    f"dataset.palette has {len(self.palette)} colours, more than dataset.num_classes "
                    f"({self.num_classes}) allows"
                )
        return self


def _fixed_class_count(data: Any, count: int, dataset: str) -> Any:
    """A dataset whose class count is fixed: checked before the fields (and the class names' count)."""
    given = data.get("num_classes") if isinstance(data, Mapping) else None
    if isinstance(given, int) and given != count:
        raise ConfigError(f"dataset.num_classes must be {count} for {dataset}, got {given}")
    return data


class CityscapesDataset(SplitLayout):
    """Cityscapes fine annotations (train 2,975 / val 500 / test 1,525), labelIds mapped to the 19 trainIds."""

    name: Literal["cityscapes"]
    labels: Literal["labelIds", "labelTrainIds"]
    """Which gtFine masks to read: the official *_labelIds.png (mapped here), or *_labelTrainIds.png already
    converted by cityscapesScripts."""

    @model_validator(mode="before")
    @classmethod
    def _classes(cls, data: Any) -> Any:
        return _fixed_class_count(data, 19, "Cityscapes (its trainIds)")


class ADE20KDataset(SplitLayout):
    """ADE20K SceneParsing (ADEChallengeData2016: training 20,210 / validation 2,000), 150 classes."""

    name: Literal["ade20k"]

    @model_validator(mode="before")
    @classmethod
    def _classes(cls, data: Any) -> Any:
        return _fixed_class_count(data, 150, "ADE20K")


class CamVidDataset(SplitLayout):
    """CamVid in the SegNet layout (train 367 / val 101 / test 233, 480x360), 11 classes, void ignored."""

    name: Literal["camvid"]

    @model_validator(mode="before")
    @classmethod
    def _classes(cls, data: Any) -> Any:
        return _fixed_class_count(data, 11, "CamVid (the SegNet layout's 11 classes)")


DatasetConfig = Annotated[
    VOCDataset
    | SBDDataset
    | VOCAugDataset
    | SyntheticDataset
    | FolderDataset
    | CityscapesDataset
    | ADE20KDataset
    | CamVidDataset,
    Field(discriminator="name"),
]


# ----------------------------------------------------------------------------- training


class SGDConfig(Section):
    """configs/optim/sgd.yaml: the papers' SGD (momentum 0.9, weight decay 1e-4, lr 0.007)."""

    name: Literal["sgd"]
    lr: PositiveFloat
    momentum: NonNegativeFloat
    weight_decay: NonNegativeFloat
    nesterov: bool
    head_lr_mult: PositiveFloat
    """ASPP, decoder and heads train at lr * head_lr_mult (the backbone at lr)."""
    no_decay_norm: bool
    """true: no weight decay on BatchNorm and bias parameters."""

    @model_validator(mode="after")
    def _nesterov(self) -> SGDConfig:
        if self.nesterov and self.momentum == 0:
            raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
        return self


class AdamWConfig(Section):
    """configs/optim/adamw.yaml: AdamW, the usual choice for timm encoders (ConvNeXt, ...), with the backbone at
    a fraction of the head's learning rate."""

    name: Literal["adamw"]
    lr: PositiveFloat
    betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)]
    eps: PositiveFloat
    weight_decay: NonNegativeFloat
    backbone_lr_mult: PositiveFloat
    """The backbone trains at lr * backbone_lr_mult, ASPP, decoder and heads at lr."""
    no_decay_norm: bool


OptimConfig = Annotated[SGDConfig | AdamWConfig, Field(discriminator="name")]


class ScheduleConfig(Section):
    """configs/schedule: lr = base_lr * (1 - iter / max_iters) ** power, after an optional linear warmup."""

    name: Literal["poly"]
    power: PositiveFloat
    warmup_iters: NonNegativeInt
    warmup_factor: Annotated[float, Field(gt=0, le=1)]
    """Warmup starts at base_lr * warmup_factor."""


class LossBase(Section):
    aux_weight: NonNegativeFloat
    """Weight of the auxiliary head's loss (used only when model.aux_head is on)."""


class CrossEntropyConfig(LossBase):
    """Pixel-wise cross-entropy (BCE for one class), averaged over the valid pixels of the batch."""

    name: Literal["cross_entropy"]
    class_weights: Literal["auto"] | list[NonNegativeFloat] | None
    """null; one weight per class; or auto: median-frequency balancing, median(f) / f_c with f_c the share of
    class c among the training masks' valid pixels (computed once, written to the run dir, logged)."""


class OHEMConfig(LossBase):
    """Online hard example mining: cross-entropy over the pixels the model gets least right."""

    name: Literal["ohem"]
    thresh: Annotated[float, Field(gt=0, le=1)]
    """Pixels whose true-class probability is below thresh are kept..."""
    min_kept: NonNegativeInt
    """...and at least the min_kept hardest valid pixels of the batch (per process)."""


class FocalConfig(LossBase):
    """Focal loss (Lin et al. 2017): -(1 - p_t)^gamma log p_t, averaged over the valid pixels."""

    name: Literal["focal"]
    gamma: NonNegativeFloat


class DiceConfig(LossBase):
    """Soft Dice loss over the classes present in the batch's targets."""

    name: Literal["dice"]
    eps: NonNegativeFloat
    """Added to numerator and denominator (smoothing)."""


class LovaszConfig(LossBase):
    """Lovasz-softmax (Berman et al. 2018): a surrogate of the Jaccard loss, i.e. of 1 - IoU."""

    name: Literal["lovasz"]


def _loss_of_older_checkpoints(value: Any) -> Any:
    # Checkpoints written before the loss group had `loss: {aux_weight}` and trained with cross-entropy.
    if isinstance(value, Mapping) and "name" not in value:
        return {"name": "cross_entropy", "class_weights": None, **value}
    return value


LossConfig = Annotated[
    CrossEntropyConfig | OHEMConfig | FocalConfig | DiceConfig | LovaszConfig,
    Field(discriminator="name"),
    BeforeValidator(_loss_of_older_checkpoints),
]


class EmaConfig(Section):
    """trainer.ema: an exponential moving average of the weights (deeplab/ema.py), validated as val/ema/*."""

    decay: Annotated[float, Field(gt=0, lt=1)] | None
    """null: off; e.g. 0.999: after each optimizer step ema = decay * ema + (1 - decay) * weights."""
    warmup: NonNegativeInt
    """Optimizer steps over which the decay ramps linearly from 0 to `decay` (0: `decay` from the start)."""


class TrainerConfig(Section):
    """configs/trainer: the loop, its intervals and the run-time options."""

    max_iters: PositiveInt
    batch_size: PositiveInt
    """Total over all processes."""
    crop_size: PositiveInt | Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]
    """Training crop: N for N x N (513 in the papers), or [height, width] (Cityscapes: [512, 1024])."""
    eval_interval: PositiveInt
    """Validate every N iterations (and at the end)."""
    ckpt_interval: PositiveInt
    """Write checkpoints/last.pt every N iterations (and at the end, and on a stop signal)."""
    log_interval: PositiveInt
    resume: str | None
    """auto: the run dir's last.pt if there is one; a path: that last.pt; null: start afresh."""
    amp: Amp
    channels_last: Flag
    compile: bool
    device: Device
    num_workers: NonNegativeInt
    seed: int
    deterministic: bool
    sync_bn: bool
    """SyncBatchNorm under DDP."""
    freeze_bn: Annotated[bool, Added(False)]
    """Every BatchNorm keeps its running statistics and affine parameters (the DeepLabv3 paper's second stage:
    fine-tuning at output stride 8 with BatchNorm frozen)."""
    activation_checkpointing: Annotated[bool, Added(False)]
    """Recompute the backbone's deepest stages in the backward pass instead of storing their activations:
    less memory (OS 8 on a small GPU) for more time."""
    max_nonfinite_skips: NonNegativeInt
    """Non-finite losses to skip (one host sync per step) before stopping; 0 checks at log boundaries only."""
    ema: Annotated[EmaConfig, Added({"decay": None, "warmup": 0})]
    accumulate: Annotated[PositiveInt, Added(1)]
    """Micro-batches per optimizer step (gradient accumulation): batch_size stays the batch of one optimizer
    step, each process runs batch_size / (processes * accumulate) images at a time. Iterations, the schedule,
    logs and checkpoints count optimizer steps."""
    precise_bn: Annotated[Literal["auto"] | NonNegativeInt, Added(0)]
    """Before each validation, recompute BatchNorm's running statistics over N training batches, on a copy that
    is validated and saved as best.pt (deeplab/precise_bn.py); 0: off; auto: 16 batches while the running
    statistics still hold over 1% of their initial values ((1 - momentum)^steps: a short run from random
    weights, above all with momentum 0.01), else off."""

    def crop(self) -> tuple[int, int]:
        """(height, width) of the training crop."""
        c = self.crop_size
        return (c, c) if isinstance(c, int) else (c[0], c[1])


class EvalConfig(Section):
    """configs/eval: how whole images are evaluated (validation in training, evaluate.py, predict)."""

    output_stride: Literal[8, 16] | None
    """Evaluate at another output stride than the model was trained at (train 16, eval 8)."""
    scales: Annotated[list[PositiveFloat], Field(min_length=1)]
    """Multi-scale inputs, e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]; probabilities are averaged."""
    flip: bool
    mode: Literal["whole", "slide"]
    window: PositiveInt
    """slide: window size."""
    overlap: Annotated[float, Field(ge=0, lt=1)]
    """slide: overlap of neighbouring windows."""
    batch_size: PositiveInt


class TensorBoardLoggerConfig(Section):
    """configs/logger/tensorboard: event files in the run dir's tensorboard/ (deeplab/loggers/tensorboard.py)."""


class CsvLoggerConfig(Section):
    """configs/logger/csv: the run dir's metrics.csv, one row per logged step (deeplab/loggers/csvfile.py)."""


class MlflowLoggerConfig(Section):
    """configs/logger/mlflow: MLflow tracking (pip install -e ".[mlflow]"; deeplab/loggers/mlflow_tracking.py)."""

    tracking_uri: str | None
    """null: the local store mlruns/ beside the run dir (outputs/train/mlruns); or a server, a database URI."""
    experiment: Annotated[str, Field(min_length=1)]
    """The MLflow experiment the run is logged in."""


class WandbLoggerConfig(Section):
    """configs/logger/wandb: Weights & Biases (pip install -e ".[wandb]"; deeplab/loggers/wandb_run.py), offline
    unless you have logged in (WANDB_API_KEY or `wandb login`; WANDB_MODE, when set, decides)."""

    project: Annotated[str, Field(min_length=1)]
    """The W&B project the run is logged in."""


def _tensorboard_flag(value: Any) -> Any:
    """logger.tensorboard was a flag before the logger list: true is the logger, false none."""
    if value is True:
        return {}
    return None if value is False else value


class LoggerConfig(Section):
    """configs/logger: the loggers chosen by logger=[tensorboard,csv,mlflow,wandb] (each adds its section)."""

    tensorboard: Annotated[TensorBoardLoggerConfig | None, BeforeValidator(_tensorboard_flag)] = None
    csv: CsvLoggerConfig | None = None
    mlflow: MlflowLoggerConfig | None = None
    wandb: WandbLoggerConfig | None = None
    num_images: NonNegativeInt
    """Validation images shown as input | truth | prediction."""


class PathsConfig(Section):
    data_dir: str
    output_dir: str
    cache_dir: str
    """Results worth keeping between runs (the training masks' label counts), keyed by the files they
    come from."""


class TrainConfig(Section):
    """configs/train.yaml, composed: everything `python train.py` runs on."""

    task_name: str
    model: Annotated[ModelConfig, ARCHITECTURE]
    backbone: Annotated[BackboneConfig, ARCHITECTURE]
    dataset: Annotated[DatasetConfig, DATA]
    optim: Annotated[OptimConfig, OPTIMISER]
    schedule: ScheduleConfig
    trainer: TrainerConfig
    eval: EvalConfig
    loss: LossConfig
    logger: LoggerConfig
    paths: PathsConfig
    optimized_metric: MetricName
    """The metric train.py returns to Hydra sweepers (e.g. Optuna)."""

    @model_validator(mode="after")
    def _cross(self) -> TrainConfig:
        t = self.trainer
        if self.schedule.warmup_iters >= t.max_iters:
            raise ConfigError(
                f"schedule.warmup_iters must be below trainer.max_iters ({t.max_iters}), got "
                f"{self.schedule.warmup_iters}"
            )
        if t.batch_size < 2 and self.model.aspp.image_pooling:
            raise ConfigError(
                f"trainer.batch_size={t.batch_size}: BatchNorm after ASPP's image pooling needs at least 2 "
                "images per process in training; raise trainer.batch_size"
            )
        if isinstance(self.loss, CrossEntropyConfig) and isinstance(self.loss.class_weights, list):
            want = max(self.dataset.num_classes, 2)
            if len(self.loss.class_weights) != want:
                raise ConfigError(
                    f"loss.class_weights has {len(self.loss.class_weights)} values but there are {want} classes"
                    f"{' (background and foreground)' if self.dataset.num_classes == 1 else ''}; give one per class"
                )
        untrained = (
            self.model.init_from is None and self.model.pretrained is None and not self.backbone.pretrained
        )
        if t.freeze_bn and untrained:
            raise ConfigError(
                "trainer.freeze_bn=true would freeze BatchNorm at its initial statistics: give the trained weights "
                "to start from with model.init_from=PATH (or use pretrained weights)"
            )
        if t.activation_checkpointing and not self.backbone.name.startswith("resnet"):
            raise ConfigError(
                f"trainer.activation_checkpointing is offered for the ResNet backbones (layer3 and layer4 "
                f"recomputed unit by unit), not {self.backbone.name}"
            )
        if self.model.pretrained is not None and self.backbone.name not in TORCHVISION_DEEPLABS:
            raise ConfigError(
                f"model.pretrained: torchvision publishes DeepLabV3 weights for {', '.join(TORCHVISION_DEEPLABS)} "
                f"only, not {self.backbone.name}"
            )
        return self

    def aspp_rates(self) -> list[int]:
        """ASPP rates at the training output stride."""
        return list(self.model.aspp.rates or default_aspp_rates(self.backbone.output_stride))


def location_keys() -> list[str]:
    """The dataset keys declared LOCATION (where the data lies and how it is read): what evaluate.py may
    override in a model's dataset section."""
    return keys_with(key_roles(TrainConfig), "location", "dataset")


class ModelRun(Section):
    """What running a trained model takes (evaluate.py, deeplab.predict, deeplab.demo): which model, and where
    and how it runs (deeplab.predict.load_segmenter, deeplab.runtime)."""

    task_name: str
    checkpoint: str
    """A checkpoint train.py wrote (last.pt or best.pt), a run folder or its checkpoints/ folder (best.pt, else
    last.pt), an exported model folder (format=hub), torchvision's DeepLabV3 .pth, or an ONNX file of
    python -m deeplab.export (run with ONNX Runtime); see deeplab.locate."""
    device: Device
    amp: Amp
    channels_last: Flag
    eval: EvalConfig
    paths: PathsConfig


class EvaluateConfig(ModelRun):
    """configs/evaluate.yaml: `python evaluate.py checkpoint=PATH` (an ONNX file is scored on the dataset its
    metadata records)."""

    num_workers: NonNegativeInt
    dataset: dict[str, Any]
    """Non-null values replace the model's dataset settings; only location keys (location_keys()), e.g.
    dataset.root=/data/VOCdevkit, dataset.skip_bad=true (an unreadable image left out of the metrics)."""

    @model_validator(mode="after")
    def _dataset(self) -> EvaluateConfig:
        allowed = location_keys()
        for key, value in self.dataset.items():
            if key not in allowed and value is not None:
                raise ConfigError(
                    f"dataset.{key}: evaluate.py may change where the model's data lies ({', '.join(allowed)}), "
                    f"not what it is; drop dataset.{key}"
                )
        return self


class PredictConfig(ModelRun):
    """configs/predict.yaml: `python -m deeplab.predict checkpoint=PATH input=FILE_OR_DIR_OR_VIDEO`."""

    input: str
    output: str
    save_masks: bool
    """Video input: also write one class-id PNG per frame (output/<video name>/<frame>.png)."""
    autolabel: bool
    """Write the predictions as a folder dataset to correct and train on: output/images, output/masks (palette
    PNGs), output/overlays and output/dataset/autolabel.yaml (deeplab.autolabel)."""
    raster_color: bool
    """A GeoTIFF input (predicted in eval.window windows with eval.overlap, deeplab.raster): also write the
    colour mask as an RGB GeoTIFF."""
    alpha: Annotated[float, Field(ge=0, le=1)]
    """Opacity of the colour mask drawn over the photo."""


class DemoConfig(ModelRun):
    """configs/demo.yaml: `python -m deeplab.demo checkpoint=PATH`, a Gradio page (deeplab.demo)."""

    host: str
    """The address the page is served on: 127.0.0.1 (this machine) or 0.0.0.0 (others too)."""
    port: Annotated[int, Field(ge=1, le=65535)]
    alpha: Annotated[float, Field(ge=0, le=1)]
    """Opacity of the colour mask drawn over the photo."""


class ExportConfig(Section):
    """configs/export.yaml: `python -m deeplab.export checkpoint=PATH format=onnx|exported_program`."""

    task_name: str
    checkpoint: str
    """A checkpoint, a run folder or an exported model folder (what evaluate.py takes, ONNX files aside)."""
    format: Literal["onnx", "onnx_int8", "exported_program", "hub"]
    """onnx_int8: ONNX quantised to INT8 by ONNX Runtime (static, QDQ, per-channel weights) for the CPU; hub: the
    model folder Hugging Face tooling reads (config.json = the model card, model.safetensors, README.md)."""
    calibration: PositiveInt
    """onnx_int8: how many training images (through the evaluation transform) calibrate the activation
    ranges; as many validation images measure how often int8 and fp32 agree."""
    exporter: Literal["dynamo", "torchscript"]
    """ONNX: the TorchScript tracer (seconds; PyTorch has deprecated it), or PyTorch's torch.export-based
    exporter (tens of seconds for a ResNet-101; the one PyTorch recommends). Both are checked in the tests."""
    output: str | None
    """null: model.onnx (model.pt2, the folder model/ for format=hub) in the run dir."""
    output_stride: Literal[8, 16] | None
    opset: Annotated[int, Field(ge=17)]
    trace_size: Annotated[list[Annotated[int, Field(ge=32)]], Field(min_length=2, max_length=2)]
    check: bool
    tolerance: PositiveFloat
    paths: PathsConfig


# ----------------------------------------------------------------------------- validation


def to_plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A composed config as plain containers, interpolations resolved; `???` left unset names its key."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as e:
        key = e.full_key or "a key"
        raise ConfigError(f"{key} is not set; give it on the command line, e.g. {key}=...") from None
    except InterpolationResolutionError as e:
        raise ConfigError(f"{e.full_key}: {first_line(e)}") from None


def _where(loc: tuple[Any, ...], data: Any) -> tuple[str, Any, bool]:
    """(dotted key, the value there, whether it exists) of a pydantic error location.

    Union tags and member names in `loc` (e.g. ("dataset", "voc", "root")) are not keys of the input and
    are skipped; list positions become [i].
    """
    key, node, found = "", data, True
    for i, part in enumerate(loc):
        if isinstance(node, Mapping):
            if part in node:
                key, node = f"{key}.{part}" if key else str(part), node[part]
            elif i == len(loc) - 1 and isinstance(part, str):
                key, node, found = f"{key}.{part}" if key else part, None, False
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            key, node = f"{key}[{part}]", node[part]
        else:
            break
    return key, node, found


def _siblings(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that holds loc[-1], for "did you mean" hints."""
    fields: Any = model.model_fields
    for part in loc[:-1]:
        field = fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if annotation is None or not hasattr(annotation, "model_fields"):
            return []
        fields = annotation.model_fields
    return list(fields)


def error_message(e: ValidationError, data: Mapping[str, Any], model: type[BaseModel]) -> str:
    """One line naming the key of the first error, e.g. "trainer.batch_size: must be >= 1, got 0"."""
    err = e.errors()[0]
    key, value, found = _where(tuple(err["loc"]), data)
    if isinstance(value, list):
        # A key that takes a number or a list (trainer.crop_size): a list is judged by the list branch.
        branch = [x for x in e.errors() if any(str(part).startswith("list[") for part in x["loc"])]
        if branch and _where(tuple(branch[0]["loc"]), data)[0] == key:
            err = branch[0]
            key, value, found = _where(tuple(err["loc"]), data)
    kind = err["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), _siblings(model, tuple(err["loc"])), n=1)
        parent = key.rpartition(".")[0]
        hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
        return f"{key}: unknown key{hint}"
    if kind == "missing" or not found:
        return f"{key} is missing from the config; add it (see configs/ for its default)"
    if kind == "union_tag_invalid":
        tag = err["ctx"]["discriminator"].strip("'")
        return (
            f"{key}.{tag}: unknown {key} {err['ctx']['tag']!r}; choose one of {err['ctx']['expected_tags']}"
        )
    message = err["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    more = len({_where(tuple(x["loc"]), data)[0] for x in e.errors()}) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''} in the config)" if more > 0 else ""
    return f"{key}: {message}, got {value!r}{tail}"


def validate(model: type[Section], cfg: DictConfig | Mapping[str, Any]) -> Any:
    """cfg checked against `model`; a mistake raises ConfigError naming the key."""
    if isinstance(cfg, model):
        return cfg
    data = to_plain(cfg)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(error_message(e, data, model)) from None


def train_config(cfg: TrainConfig | DictConfig | Mapping[str, Any]) -> TrainConfig:
    return validate(TrainConfig, cfg)


def evaluate_config(cfg: EvaluateConfig | DictConfig | Mapping[str, Any]) -> EvaluateConfig:
    return validate(EvaluateConfig, cfg)


def export_config(cfg: ExportConfig | DictConfig | Mapping[str, Any]) -> ExportConfig:
    return validate(ExportConfig, cfg)


def predict_config(cfg: PredictConfig | DictConfig | Mapping[str, Any]) -> PredictConfig:
    return validate(PredictConfig, cfg)


def demo_config(cfg: DemoConfig | DictConfig | Mapping[str, Any]) -> DemoConfig:
    return validate(DemoConfig, cfg)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested dicts under dotted keys: {"a": {"b": 1}} -> {"a.b": 1}; lists are leaves."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def config_dir() -> Path:
    """The configs/ folder of this checkout."""
    return Path(__file__).resolve().parents[1] / "configs"
