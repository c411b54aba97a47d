"""A trained model ready to segment photos: the Segmenter (a checkpoint's model or an ONNX file, with its
normalisation, class names, colours and overlay background), drawing its masks and overlays, and the loop that
predicts a list of images, naming and skipping those that cannot be read (predict, autolabel and the demo use it)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from deeplab.atomicfile import save_image
from deeplab.config import EvalConfig, ModelRun, overlay_background_ids
from deeplab.data.reading import read_image
from deeplab.errors import ConfigError, DatasetError
from deeplab.visualize import (
    Legend,
    display_rgb,
    draw_multilabel_map,
    draw_segmentation_map,
    ids_image,
    image_overlay,
    make_legend,
    place_legend,
)

log = logging.getLogger(__name__)


@dataclass
class Segmenter:
    """What predict needs of a model, from a checkpoint or an exported graph (ONNX, OpenVINO)."""

    model: (
        Any  # nn.Module, or an exported graph (deeplab.deploy.graph.GraphModel): model(x)["out"] are logits
    )
    normalize: Callable[[torch.Tensor], torch.Tensor]
    labels: list[str]
    palette: np.ndarray  # (>= 256, 3) uint8
    in_channels: int
    rt: Any
    background: list[int]  # classes the overlays leave as the photo (dataset.overlay_background)
    card: dict[str, Any] = field(default_factory=dict)  # model name, mean, std: what a server describes
    multilabel: bool = False  # one sigmoid per class: predictions are (C, H, W) 0 / 1 masks, not (H, W) ids
    threshold: float = 0.5  # with multilabel: the probability above which a pixel has a class

    def single_label(self, what: str) -> None:
        """A ConfigError for the uses of class-id maps (`what`) that a multi-label model cannot serve yet."""
        if self.multilabel:
            raise ConfigError(
                f"{what} writes one class per pixel, but this model is multi-label (dataset.multilabel): predict "
                "its images with `python -m deeplab.predict`, which writes a mask per class"
            )

    def legend_entries(self, classes: list[int]) -> list[tuple[str, np.ndarray]]:
        """(name, colour) of each of `classes` that is not background, for a legend."""
        return [
            (self.labels[c], self.palette[c])
            for c in classes
            if c < len(self.labels) and c not in self.background
        ]

    def __call__(self, image: np.ndarray, ev: EvalConfig) -> np.ndarray:
        """(H, W, C) uint8 image -> (H, W) uint8 class ids (multi-label: (K, H, W) uint8 0 / 1 per class)."""
        return self.predict_batch([image], ev)[0]

    def predict_batch(self, images: list[np.ndarray], ev: EvalConfig) -> list[np.ndarray]:
        """Images of one size, (H, W, C) uint8 each, in one forward pass -> their (H, W) uint8 class ids (multi-label:
        (K, H, W) uint8, 1 where a class's probability is above the threshold)."""
        from deeplab.models.inference import predict_probs

        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.rt.device)  # (B, C, H, W) uint8
        with torch.no_grad(), self.rt.autocast():
            probs = predict_probs(
                self.model, self.normalize(x), scales=ev.scales, flip=ev.flip, mode=ev.mode, window=ev.window,
                overlap=ev.overlap, multilabel=self.multilabel,
            )  # fmt: skip
        labels = probs > self.threshold if self.multilabel else probs.argmax(1)
        return list(labels.to(torch.uint8).cpu().numpy())


def load_segmenter(cfg: ModelRun) -> Segmenter:
    from deeplab.artifacts.locate import locate
    from deeplab.config.labels import color_table
    from deeplab.runtime import make_runtime

    located = locate(cfg.checkpoint)
    if located.is_graph:
        from deeplab.deploy.graph import load_graph_model

        graph = load_graph_model(
            located.path, located.kind, cfg.eval.output_stride, cfg.amp, cfg.channels_last, cfg.device
        )
        rt = make_runtime("cpu", "off", False, key="")  # the graph runtimes take host arrays
        meta = graph.meta
        palette = color_table(meta["palette"], max(256, meta["num_classes"]))
        return Segmenter(graph, rt.normalizer(meta["mean"], meta["std"]), graph.label_names, palette,
                         int(meta["in_channels"]), rt, onnx_background(meta),
                         {k: meta.get(k) for k in ("model", "mean", "std")}, bool(meta.get("multilabel", False)),
                         float(meta.get("threshold", 0.5)))  # fmt: skip
    from deeplab.deploy.restore import load_trained_model, run_settings

    model, card = load_trained_model(located.path)
    rt = make_runtime(cfg.device, *run_settings(cfg.amp, cfg.channels_last, card), key="")
    if cfg.eval.output_stride is not None:
        model.set_output_stride(cfg.eval.output_stride)
    rt.place(model)
    labels = card.labels
    return Segmenter(
        model, rt.normalizer(labels.mean, labels.std), labels.class_names,
        color_table(labels.palette, max(256, labels.num_classes)), labels.in_channels, rt, labels.overlay_background,
        {"model": f"{card.model.name}/{card.backbone.name}", "mean": list(labels.mean), "std": list(labels.std)},
        labels.multilabel, labels.threshold,
    )  # fmt: skip


def onnx_background(meta: dict[str, Any]) -> list[int]:
    """The overlay background classes of an ONNX file's metadata; files exported before the key was written
    get the default rule (the class named background, if any)."""
    if "overlay_background" in meta:
        return [int(i) for i in meta["overlay_background"]]
    return overlay_background_ids(list(meta["class_names"]), None)


def draw(
    seg: Segmenter, image: np.ndarray, pred: np.ndarray, alpha: float, legend: Legend | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(colour mask (H, W, 3), overlay (H, W' >= W, 3)), uint8: pixels of the background classes stay as the
    photo (its first three channels) in the overlay. The overlay carries `legend` (a video's, the same on
    every frame), or by default a legend of the classes found, in the corner where it hides the fewest of
    their pixels; a legend too large for the image is put beside it (W' > W)."""
    if pred.ndim == 3:  # multi-label (K, H, W): overlapping classes blend their colours
        shown = pred.copy()
        shown[[c for c in seg.background if c < len(shown)]] = 0
        keep = ~(shown == 1).any(0)
        color = draw_multilabel_map(shown, seg.palette)
        classes = [c for c in range(len(shown)) if (shown[c] == 1).any()]
    else:
        keep = np.isin(pred, seg.background)
        color = draw_segmentation_map(pred, seg.palette)
        classes = np.unique(pred).tolist()
    overlay = image_overlay(display_rgb(image), color, alpha, keep=keep)
    if legend is not None:
        return color, place_legend(overlay, legend)
    found = make_legend(seg.legend_entries(classes), *keep.shape)
    return color, place_legend(overlay, found, avoid=~keep)


def save_ids(pred: np.ndarray, palette: np.ndarray, path: Path) -> None:
    """Class ids as a palette PNG."""
    save_image(ids_image(pred, palette), path)


def class_folder(name: str) -> str:
    """A class name as a folder name (a path separator or a dot name would leave the output folder)."""
    safe = name.replace("/", "_").replace("\\", "_")
    return "_" if safe in ("", ".", "..") else safe


def save_class_masks(pred: np.ndarray, labels: list[str], output: Path, name: str) -> Path:
    """A multi-label prediction (K, H, W) of 0 / 1 as output/<class>/<name>.png, one 1-bit PNG per class (the
    layout dataset=folder reads with dataset.multilabel, so predictions can be corrected and trained on);
    returns the first class's mask."""
    paths = [output / class_folder(label) / f"{name}.png" for label in labels]
    for c, path in enumerate(paths):
        path.parent.mkdir(exist_ok=True)
        save_image(Image.fromarray(pred[c].astype(bool)), path)
    return paths[0]


def predict_each(
    seg: Segmenter, ev: EvalConfig, images: list[Path], write: Callable[[Path, np.ndarray, np.ndarray], Path],
    desc: str,
) -> tuple[list[Path], list[str]]:  # fmt: skip
    """Predict each image and write(path, image (H, W, C) uint8, class ids (H, W)) its files; returns what
    write returned, and the names of the images that could not be read (each named in a warning, skipped)."""
    written, unreadable = [], []
    for path in tqdm(images, desc=desc, unit=" images"):
        try:
            image = read_image(path, seg.in_channels)  # (H, W, C) uint8
        except DatasetError as e:
            log.warning("%s", e)
            unreadable.append(path.name)
            continue
        written.append(write(path, image, seg(image, ev)))
    return written, unreadable


def check_unreadable(unreadable: list[str], total: int, output: Path) -> None:
    """The images predict_each skipped, counted in one DatasetError (after the others were written)."""
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (
            f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        )
        raise DatasetError(
            f"{len(unreadable)} of {total} images could not be read and were skipped: {shown} (the others "
            f"are in {output})"
        )
