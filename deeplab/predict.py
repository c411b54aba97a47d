"""Segment your own photos and videos: `python -m deeplab.predict checkpoint=PATH input=FILE_OR_DIR output=DIR`
(checkpoint=FILE.onnx: a model exported by deeplab.export, run with ONNX Runtime).

For each image it writes <name>.png (class ids, palette PNG), <name>_color.png (colour mask) and
<name>_overlay.jpg (the mask over the photo, background left as it was, with a legend of the classes found).
<name> is the image's stem, or stem_suffix when two inputs share a stem (a.jpg, a.png). The checkpoint may
be one train.py wrote or torchvision's published deeplabv3_resnet50/101 weights file. Unreadable images
are named and skipped; the command then ends with exit status 2. A video (input=clip.mp4) gives
clip_overlay.mp4, and with save_masks=true one class-id PNG per frame in clip/.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from deeplab import autolabel
from deeplab.cli import hydra_main
from deeplab.config import EvalConfig, ModelRun, PredictConfig, overlay_background_ids, predict_config
from deeplab.data.reading import read_image
from deeplab.errors import ConfigError, DatasetError
from deeplab.visualize import (
    Legend,
    display_rgb,
    draw_segmentation_map,
    image_overlay,
    make_legend,
    place_legend,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".npy"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
RASTER_SUFFIXES = {".tif", ".tiff"}


def is_georeferenced(path: Path) -> bool:
    """Whether a TIFF is a GeoTIFF with a CRS that rasterio (the [geo] extra) reads: predicted in windows by
    deeplab.raster; without rasterio it is read whole, as any image."""
    try:
        import rasterio
    except ImportError:
        return False
    try:
        with rasterio.open(path) as src:
            return src.crs is not None
    except rasterio.errors.RasterioError:
        return False


def list_images(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ConfigError(
                f"input: {path} is not a file type predict reads; give an image "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}), a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or a folder "
                "of images"
            )
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
        raise ConfigError(f"input: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
    raise ConfigError(f"input: {path} does not exist; give an image file or a folder of images")


def output_names(images: list[Path]) -> dict[Path, str]:
    """A distinct output name per image: its stem, or stem_suffix where two images share a stem."""
    shared = {stem for stem, n in Counter(p.stem for p in images).items() if n > 1}
    return {p: f"{p.stem}_{p.suffix.lstrip('.').lower()}" if p.stem in shared else p.stem for p in images}


def check_output(output: Path, source: Path) -> None:
    """Refuse to write into the folder of the input images, where <name>.png could replace a photo."""
    folder = source if source.is_dir() else source.parent
    if output.resolve() == folder.resolve():
        raise ConfigError(
            f"output: {output} is the folder of the input images; give another folder, so that the masks "
            "cannot overwrite the photos"
        )


@dataclass
class Segmenter:
    """What predict needs of a model, from a checkpoint or an ONNX file."""

    model: Any  # nn.Module, or deeplab.onnx_model.OnnxSegmenter: model(x)["out"] are logits
    normalize: Callable[[torch.Tensor], torch.Tensor]
    labels: list[str]
    palette: np.ndarray  # (>= 256, 3) uint8
    in_channels: int
    rt: Any
    background: list[int]  # classes the overlays leave as the photo (dataset.overlay_background)

    def legend_entries(self, classes: list[int]) -> list[tuple[str, np.ndarray]]:
        """(name, colour) of each of `classes` that is not background, for a legend."""
        return [
            (self.labels[c], self.palette[c])
            for c in classes
            if c < len(self.labels) and c not in self.background
        ]

    def __call__(self, image: np.ndarray, ev: EvalConfig) -> np.ndarray:
        """(H, W, C) uint8 image -> (H, W) uint8 class ids."""
        from deeplab.inference import predict_probs

        x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).to(self.rt.device)  # (1, C, H, W) uint8
        with torch.no_grad(), self.rt.autocast():
            probs = predict_probs(
                self.model, self.normalize(x), scales=ev.scales, flip=ev.flip, mode=ev.mode, window=ev.window,
                overlap=ev.overlap,
            )  # fmt: skip
        return probs.argmax(1)[0].to(torch.uint8).cpu().numpy()


def load_segmenter(cfg: ModelRun) -> Segmenter:
    from deeplab.data.classes import color_table
    from deeplab.locate import locate
    from deeplab.runtime import make_runtime

    located = locate(cfg.checkpoint)
    if located.kind == "onnx":
        from deeplab.onnx_model import OnnxSegmenter, onnx_run_settings

        providers = onnx_run_settings(cfg.eval.output_stride, cfg.amp, cfg.channels_last, cfg.device)
        onnx = OnnxSegmenter(cfg.checkpoint, providers=providers)
        rt = make_runtime("cpu", "off", False, key="")  # ONNX Runtime takes host arrays
        meta = onnx.meta
        palette = color_table(meta["palette"], max(256, meta["num_classes"]))
        return Segmenter(onnx, rt.normalizer(meta["mean"], meta["std"]), onnx.label_names, palette,
                         int(meta["in_channels"]), rt, onnx_background(meta))  # fmt: skip
    from deeplab.restore import load_trained_model

    rt = make_runtime(cfg.device, cfg.amp, cfg.channels_last, key="")
    model, card = load_trained_model(located.path)
    if cfg.eval.output_stride is not None:
        model.set_output_stride(cfg.eval.output_stride)
    rt.place(model)
    labels = card.labels
    return Segmenter(
        model, rt.normalizer(labels.mean, labels.std), labels.class_names,
        color_table(labels.palette, max(256, labels.num_classes)), labels.in_channels, rt, labels.overlay_background,
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
    """Class ids as a palette PNG (the ids are the pixel values, the palette draws them)."""
    ids = Image.frombytes("P", (pred.shape[1], pred.shape[0]), pred.tobytes())
    ids.putpalette(palette[:256].reshape(-1).tolist())
    ids.save(path)


# How each video container starts (ISO base media / QuickTime: a box whose type is ftyp, or an mdat/moov/wide
# box in older QuickTime files; Matroska and WebM: the EBML id; AVI: a RIFF chunk of form AVI).
def _container(head: bytes) -> str | None:
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return "MP4/QuickTime"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:11] == b"AVI":
        return "AVI"
    return None


def unopened_video(path: Path) -> str:
    """Why OpenCV could not open a video file, in one line: it is empty, it is a video container without
    frames (a recording stopped before its first frame), or it is not a video."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return f"video {path} is empty (0 bytes): it has no frames"
    kind = _container(head)
    if kind is not None:
        return (
            f"video {path} has no frames: its {kind} container holds no video stream OpenCV can read (a "
            "recording stopped before its first frame, or an unfinished copy?)"
        )
    return f"cannot read video {path}: it is not a video file OpenCV can open ({', '.join(sorted(VIDEO_SUFFIXES))})"


def predict_video(cfg: PredictConfig, seg: Segmenter, path: Path, output: Path) -> Path:
    """<stem>_overlay.mp4 with the frames' overlays (same size and frame rate), and with cfg.save_masks one
    class-id PNG per frame in <stem>/; returns the video's path."""
    import cv2

    if seg.in_channels != 3:
        raise ConfigError(f"input: videos are RGB, but the model takes {seg.in_channels} channels")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError(unopened_video(path))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    # One legend of every class for the whole video (entries that came and went would flicker), in the
    # top-left corner or beside the frames.
    legend = make_legend(seg.legend_entries(list(range(len(seg.labels)))), height, width)
    beside = legend.tile.shape[1] if legend is not None and legend.beside else 0
    target = output / f"{path.stem}_overlay.mp4"
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width + beside, height))
    masks = output / path.stem
    if cfg.save_masks:
        masks.mkdir(exist_ok=True)
    count = 0
    try:
        with tqdm(total=frames, desc=path.name, unit=" frames") as bar:  # the rate shows frames/s
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                pred = seg(rgb, cfg.eval)
                _, overlay = draw(seg, rgb, pred, cfg.alpha, legend)
                writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                if cfg.save_masks:
                    save_ids(pred, seg.palette, masks / f"{count:06d}.png")
                count += 1
                bar.update()
    finally:
        capture.release()
        writer.release()
    if count == 0:
        target.unlink(missing_ok=True)
        raise DatasetError(f"video {path} has no frames: OpenCV opened it but decoded none")
    print(f"wrote {target} ({count} frames at {fps:g} frames/s)")
    return target


def predict(cfg: PredictConfig | DictConfig, output: Path) -> list[Path]:
    """Segment every image of cfg.input into `output` (or a video into <stem>_overlay.mp4); returns the
    class-id PNG paths (the video's path). Unreadable images are skipped and named; a DatasetError at the
    end counts them."""
    cfg = predict_config(cfg)
    source = Path(cfg.input)
    check_output(output, source)
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        seg = load_segmenter(cfg)
        output.mkdir(parents=True, exist_ok=True)
        return [predict_video(cfg, seg, source, output)]
    if source.is_file() and source.suffix.lower() in RASTER_SUFFIXES and is_georeferenced(source):
        from deeplab.raster import predict_raster

        return predict_raster(cfg, load_segmenter(cfg), source, output)
    images = list_images(source)
    names = output_names(images)
    seg = load_segmenter(cfg)
    output.mkdir(parents=True, exist_ok=True)
    if cfg.autolabel:
        return autolabel.predict_folder(cfg, seg, images, names, output)

    def write(path: Path, image: np.ndarray, pred: np.ndarray) -> Path:
        ids_path = output / f"{names[path]}.png"
        save_ids(pred, seg.palette, ids_path)
        color, overlay = draw(seg, image, pred, cfg.alpha)
        Image.fromarray(color).save(output / f"{names[path]}_color.png")
        Image.fromarray(overlay).save(output / f"{names[path]}_overlay.jpg", quality=92)
        return ids_path

    written, unreadable = predict_each(seg, cfg.eval, images, write, "predict")
    print(f"wrote {len(written)} x 3 files to {output}")
    check_unreadable(unreadable, len(images), output)
    return written


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


@hydra_main(config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from deeplab.cli import exit_on_user_error

    with exit_on_user_error():
        config = predict_config(cfg)
        predict(config, Path(config.output))


if __name__ == "__main__":
    main()
