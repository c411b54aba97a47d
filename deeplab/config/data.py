"""configs/dataset: the datasets (official layouts, folders, generated) and the keys they share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from deeplab.config.base import (
    Color,
    Label,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Section,
    check_class_names,
)
from deeplab.config.roles import ARCHITECTURE, LOCATION, Added
from deeplab.errors import ConfigError

MULTILABEL_DATASETS = ("folder", "coco", "labelme")
"""The datasets whose masks can give a pixel several classes (dataset.multilabel)."""


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
    multilabel: Annotated[bool, ARCHITECTURE, Added(False)]
    """true: a pixel may have several classes at once (building and damaged): one sigmoid per class instead of
    a softmax over them, masks of 0 (absent), 1 (present) and ignore_index per class (dataset=folder: a folder
    of binary masks per class, or one multi-channel file), losses and metrics per class (docs/multilabel.md)."""
    threshold: Annotated[float, Field(gt=0, lt=1), LOCATION, Added(0.5)]
    """dataset.multilabel: the probability above which a pixel has a class (metrics, predict, export). How the
    predictions are read, not what the model learnt: evaluate.py may score a checkpoint at another one."""

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
    def _multilabel(self) -> DatasetBase:
        if not self.multilabel:
            return self
        name = getattr(self, "name", "folder")
        if name not in MULTILABEL_DATASETS:
            raise ConfigError(
                f"dataset.multilabel=true: dataset={name} has one class per pixel; multi-label masks are read by "
                f"dataset={' / '.join(MULTILABEL_DATASETS)}"
            )
        if self.ignore_index in (0, 1):
            raise ConfigError(
                f"dataset.ignore_index={self.ignore_index}: multi-label masks hold 0 (absent) and 1 (present) per "
                "class, so the ignore index must be another value (255)"
            )
        if self.sampler == "rare_class":
            raise ConfigError(
                "dataset.sampler=rare_class draws images by their single-label class shares; use sampler=random "
                "with dataset.multilabel (or loss.pos_weight for rare classes)"
            )
        return self

    @model_validator(mode="after")
    def _names(self) -> DatasetBase:
        if self.class_names is not None:
            check_class_names(self.class_names, "dataset.class_names")
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
        """Names of the predicted labels: the classes, or background + the class for a binary model (a
        multi-label model predicts each class on its own: its classes)."""
        names = self.names()
        return ["background", names[0]] if self.num_classes == 1 and not self.multilabel else names


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
    """[background, foreground] pixel values of binary masks, e.g. [0, 255]: they become classes 0 and 1 (with
    dataset.multilabel: absent and present, in every class's mask)."""

    @model_validator(mode="after")
    def _binary(self) -> FolderDataset:
        if self.binary_values is not None:
            if self.num_classes > 2 and not self.multilabel:
                raise ConfigError(
                    f"dataset.binary_values is for binary masks (dataset.num_classes 1 or 2), but "
                    f"dataset.num_classes is {self.num_classes}"
                )
            if self.binary_values[0] == self.binary_values[1]:
                raise ConfigError(
                    f"dataset.binary_values must be two different values, got {self.binary_values}"
                )
            if self.palette is not None and not self.multilabel:
                raise ConfigError(
                    "dataset.binary_values and dataset.palette exclude each other; set one of them"
                )
        return self

    @model_validator(mode="after")
    def _palette(self) -> FolderDataset:
        if (
            self.palette is not None and not self.multilabel
        ):  # multi-label masks are binary: colours only draw
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


def _with_names(data: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """A dataset section whose null num_classes and class_names are filled from its annotation files' class
    names, after a background class (a multi-label model has none); what the config gives is kept."""
    data = dict(data)
    classes = names if data.get("multilabel") is True else ["background", *names]
    if data.get("num_classes") is None:
        data["num_classes"] = len(classes)
    if data.get("class_names") is None and data["num_classes"] == len(classes):
        data["class_names"] = classes
    return data


class AnnotationSplit(Section):
    images: str
    """The folder of the split's images (COCO's file_name is read relative to it)."""
    annotations: str
    """The split's COCO annotation file (instances JSON: images, annotations, categories)."""


class CocoDataset(DatasetBase):
    """Labels as labelling tools (CVAT, Label Studio, Roboflow) export them: per split an images folder and a COCO
    annotation file, rendered to class masks by deeplab.data.coco (polygons and RLE through pycocotools)."""

    name: Literal["coco"]
    train: Annotated[AnnotationSplit, LOCATION]
    val: Annotated[AnnotationSplit, LOCATION]
    categories: list[int] | None
    """The COCO category ids of classes 1, 2, ... in order (class 0 is the background; with dataset.multilabel
    classes 0, 1, ...); null: every category of the training file, in the file's order. Annotations of
    categories left out are not drawn."""
    unannotated: Literal["background", "ignore"]
    """What the pixels no annotation covers are: background (class 0) or ignore_index."""
    crowd: Literal["ignore", "keep"]
    """iscrowd regions: ignore_index, or drawn as their category."""
    empty_images: Literal["skip", "background"]
    """Images without any annotation: left out (an export of unfinished labelling), or all background."""

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any) -> Any:
        """num_classes and class_names, when null, from the training file's categories."""
        if not isinstance(data, Mapping) or (data.get("num_classes") is not None and data.get("class_names")):
            return data
        from deeplab.config.annotations import coco_category_names

        split = data.get("train") or {}
        names = coco_category_names(
            split.get("annotations") if isinstance(split, Mapping) else None, data.get("categories")
        )
        return _with_names(data, names)


class LabelmeSplit(Section):
    folder: str
    """Images with labelme's JSON files beside them (photo.jpg + photo.json)."""


class LabelmeDataset(DatasetBase):
    """A folder of images labelled with labelme (polygons, rectangles, circles, lines, points), rendered to class
    masks by deeplab.data.labelme, in the order of each file's shapes (a later shape is drawn over an earlier)."""

    name: Literal["labelme"]
    train: Annotated[LabelmeSplit, LOCATION]
    val: Annotated[LabelmeSplit, LOCATION]
    line_width: PositiveInt
    """Width in pixels of line and linestrip shapes (and the diameter of points)."""
    empty_images: Literal["skip", "background"]
    """Images without a JSON file or without shapes: left out, or all background."""

    @model_validator(mode="before")
    @classmethod
    def _from_files(cls, data: Any) -> Any:
        """class_names and num_classes, when null, from the labels of the training files (sorted, after the
        background; labelme's `_background_` is the background)."""
        if not isinstance(data, Mapping) or (data.get("num_classes") is not None and data.get("class_names")):
            return data
        from deeplab.config.annotations import labelme_label_names

        split = data.get("train") or {}
        names = labelme_label_names(split.get("folder") if isinstance(split, Mapping) else None)
        return _with_names(data, names)


DatasetConfig = Annotated[
    VOCDataset
    | SBDDataset
    | VOCAugDataset
    | SyntheticDataset
    | FolderDataset
    | CityscapesDataset
    | ADE20KDataset
    | CamVidDataset
    | CocoDataset
    | LabelmeDataset,
    Field(discriminator="name"),
]
