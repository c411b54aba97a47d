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
from tqdm import tqdm

from deeplab.atomicfile import save_image
from deeplab.config import EvalConfig, ModelRun, overlay_background_ids
from deeplab.data.reading import read_image
from deeplab.errors import DatasetError
from deeplab.visualize import (
    Legend,
    display_rgb,
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

    def legend_entries(self, classes: list[int]) -> list[tuple[str, np.ndarray]]:
        """(name, colour) of each of `classes` that is not background, for a legend."""
        return [
            (self.labels[c], self.palette[c])
            for c in classes
            if c < len(self.labels) and c not in self.background
        ]

    def __call__(self, image: np.ndarray, ev: EvalConfig) -> np.ndarray:
        """(H, W, C) uint8 image -> (H, W) uint8 class ids."""
        return self.predict_batch([image], ev)[0]

    def predict_batch(self, images: list[np.ndarray], ev: EvalConfig) -> list[np.ndarray]:
        """Images of one size, (H, W, C) uint8 each, in one forward pass -> their (H, W) uint8 class ids."""
        from deeplab.models.inference import predict_probs

        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.rt.device)  # (B, C, H, W) uint8
        with torch.no_grad(), self.rt.autocast():
            probs = predict_probs(
                self.model, self.normalize(x), scales=ev.scales, flip=ev.flip, mode=ev.mode, window=ev.window,
                overlap=ev.overlap,
            )  # fmt: skip
        return list(probs.argmax(1).to(torch.uint8).cpu().numpy())


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
                         {k: meta.get(k) for k in ("model", "mean", "std")})  # fmt: skip
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
    keep = np.isin(pred, seg.background)
    color = draw_segmentation_map(pred, seg.palette)
    overlay = image_overlay(display_rgb(image), color, alpha, keep=keep)
    if legend is not None:
        return color, place_legend(overlay, legend)
    found = make_legend(seg.legend_entries(np.unique(pred).tolist()), *pred.shape)
    return color, place_legend(overlay, found, avoid=~keep)


def save_ids(pred: np.ndarray, palette: np.ndarray, path: Path) -> None:
    """Class ids as a palette PNG."""
    save_image(ids_image(pred, palette), path)


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
