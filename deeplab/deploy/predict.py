"""Segment your own photos and videos: `python -m deeplab.predict checkpoint=PATH input=FILE_OR_DIR output=DIR`
(checkpoint=FILE.onnx: a model exported by deeplab.deploy.export, run with ONNX Runtime).

For each image it writes <name>.png (class ids, palette PNG), <name>_color.png (colour mask) and
<name>_overlay.jpg (the mask over the photo, background left as it was, with a legend of the classes found).
A multi-label model (dataset.multilabel) writes <class>/<name>.png instead of <name>.png, a 1-bit mask per
class, and blends the colours of overlapping classes.
<name> is the image's stem, or stem_suffix when two inputs share a stem (a.jpg, a.png). The checkpoint may
be one train.py wrote or torchvision's published deeplabv3_resnet50/101 weights file. Unreadable images
are named and skipped; the command then ends with exit status 2. A video (input=clip.mp4) gives
clip_overlay.mp4, and with save_masks=true one class-id PNG per frame in clip/.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from deeplab.atomicfile import atomic_path, save_image
from deeplab.cli import hydra_main
from deeplab.config import PredictConfig, predict_config
from deeplab.deploy import autolabel
from deeplab.deploy.segmenter import (
    Segmenter,
    check_unreadable,
    draw,
    load_segmenter,
    predict_each,
    save_class_masks,
    save_ids,
)
from deeplab.errors import ConfigError, DatasetError
from deeplab.visualize import (
    make_legend,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".npy"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
RASTER_SUFFIXES = {".tif", ".tiff"}


def is_georeferenced(path: Path) -> bool:
    """Whether a TIFF is a GeoTIFF with a CRS that rasterio (the [geo] extra) reads: predicted in windows by
    deeplab.deploy.raster; without rasterio it is read whole, as any image."""
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
    if cfg.save_masks:
        seg.single_label("save_masks=true (a class-id PNG per frame)")
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
    masks = output / path.stem
    with atomic_path(target) as tmp:  # a stopped run leaves the previous video, not a truncated one
        count = write_video(cfg, seg, capture, tmp, (fps, frames, width + beside, height), legend, masks)
        if count == 0:
            raise DatasetError(f"video {path} has no frames: OpenCV opened it but decoded none")
    print(f"wrote {target} ({count} frames at {fps:g} frames/s)")
    return target


def write_video(
    cfg: PredictConfig, seg: Segmenter, capture: Any, target: Path, shape: tuple[float, int | None, int, int],
    legend: Any, masks: Path,
) -> int:  # fmt: skip
    """The overlays of capture's frames into the video `target` (shape: fps, frames or None, width, height),
    and with cfg.save_masks the class ids of each frame into masks/; returns the frames written."""
    import cv2

    fps, frames, width, height = shape
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    count = 0
    try:
        with tqdm(total=frames, desc=target.name, unit=" frames") as bar:  # the rate shows frames/s
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                pred = seg(rgb, cfg.eval)
                _, overlay = draw(seg, rgb, pred, cfg.alpha, legend)
                writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                if cfg.save_masks:
                    masks.mkdir(exist_ok=True)
                    save_ids(pred, seg.palette, masks / f"{count:06d}.png")
                count += 1
                bar.update()
    finally:
        capture.release()
        writer.release()
    return count


@contextlib.contextmanager
def new_folder(output: Path) -> Iterator[None]:
    """Create output; if the block fails before writing anything into a folder it created, remove it again (a
    video without frames, a raster with the wrong bands leave no empty folder behind)."""
    existed = output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if not existed and not any(output.iterdir()):
            output.rmdir()
        raise


def predict(cfg: PredictConfig | DictConfig, output: Path) -> list[Path]:
    """Segment every image of cfg.input into `output` (or a video into <stem>_overlay.mp4); returns the
    class-id PNG paths (a multi-label model: its first class's masks; a video: its path). Unreadable images are
    skipped and named; a DatasetError at the end counts them."""
    cfg = predict_config(cfg)
    source = Path(cfg.input)
    check_output(output, source)
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        seg = load_segmenter(cfg)
        with new_folder(output):
            return [predict_video(cfg, seg, source, output)]
    if source.is_file() and source.suffix.lower() in RASTER_SUFFIXES and is_georeferenced(source):
        from deeplab.deploy.raster import predict_raster

        seg = load_segmenter(cfg)
        with new_folder(output):
            return predict_raster(cfg, seg, source, output)
    images = list_images(source)
    names = output_names(images)
    seg = load_segmenter(cfg)
    output.mkdir(parents=True, exist_ok=True)
    if cfg.autolabel:
        seg.single_label("autolabel=true")
        return autolabel.predict_folder(cfg, seg, images, names, output)

    def write(path: Path, image: np.ndarray, pred: np.ndarray) -> Path:
        ids_path = output / f"{names[path]}.png"
        if seg.multilabel:  # (K, H, W): a mask per class, in output/<class>/
            ids_path = save_class_masks(pred, seg.labels, output, names[path])
        else:
            save_ids(pred, seg.palette, ids_path)
        color, overlay = draw(seg, image, pred, cfg.alpha)
        save_image(Image.fromarray(color), output / f"{names[path]}_color.png")
        save_image(Image.fromarray(overlay), output / f"{names[path]}_overlay.jpg", quality=92)
        return ids_path

    written, unreadable = predict_each(seg, cfg.eval, images, write, "predict")
    per_image = f"{len(seg.labels)} class masks + 2" if seg.multilabel else "3"
    print(f"wrote {len(written)} x {per_image} files to {output}")
    check_unreadable(unreadable, len(images), output)
    return written


@hydra_main(config_path="../../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from deeplab.cli import exit_on_user_error

    with exit_on_user_error():
        config = predict_config(cfg)
        predict(config, Path(config.output))


if __name__ == "__main__":
    main()
