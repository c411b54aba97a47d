"""Segment your own photos: `python -m deeplab.predict checkpoint=PATH input=FILE_OR_DIR output=DIR`.

For each image it writes <name>.png (class ids, palette PNG), <name>_color.png (colour mask) and
<name>_overlay.jpg (the mask over the photo, background left as it was, with a legend of the classes found).
<name> is the image's stem, or stem_suffix when two inputs share a stem (a.jpg, a.png). The checkpoint may
be one train.py wrote or torchvision's published deeplabv3_resnet50/101 weights file. Unreadable images
are named and skipped; the command then ends with exit status 2.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from deeplab.config import PredictConfig, predict_config
from deeplab.data.reading import read_image
from deeplab.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".npy"}


def list_images(path: Path) -> list[Path]:
    if path.is_file():
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


def predict(cfg: PredictConfig | DictConfig, output: Path) -> list[Path]:
    """Segment every image of cfg.input into `output`; returns the class-id PNG paths. Unreadable images are
    skipped and named; a DatasetError at the end counts them."""
    from deeplab import data
    from deeplab.inference import predict_probs
    from deeplab.restore import load_trained_model
    from deeplab.runtime import make_runtime
    from deeplab.visualize import display_rgb, draw_legend, draw_segmentation_map, image_overlay

    cfg = predict_config(cfg)
    rt = make_runtime(cfg.device, cfg.amp, cfg.channels_last, key="")
    source = Path(cfg.input)
    images = list_images(source)
    names = output_names(images)
    check_output(output, source)
    model, train_cfg = load_trained_model(cfg.checkpoint)
    ev, d = cfg.eval, train_cfg.dataset
    if ev.output_stride is not None:
        model.set_output_stride(ev.output_stride)
    rt.place(model)
    palette = data.palette(d)
    labels = d.label_names()
    # Pixels of the background class are left as the photo in the overlay.
    background = [i for i, n in enumerate(labels) if n.lower() == "background"]
    normalize = rt.normalizer(d.mean, d.std)
    output.mkdir(parents=True, exist_ok=True)
    written, unreadable = [], []
    flat_palette = palette[:256].reshape(-1).tolist()
    for path in tqdm(images, desc="predict", unit=" images"):
        try:
            image = read_image(path, d.in_channels)  # (H, W, C) uint8
        except DatasetError as e:
            log.warning("%s", e)
            unreadable.append(path.name)
            continue
        x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).to(rt.device)  # (1, C, H, W) uint8
        with torch.no_grad(), rt.autocast():
            probs = predict_probs(
                model, normalize(x), scales=ev.scales, flip=ev.flip, mode=ev.mode, window=ev.window,
                overlap=ev.overlap,
            )  # fmt: skip
        pred = probs.argmax(1)[0].to(torch.uint8).cpu().numpy()  # (H, W)
        ids = Image.frombytes("P", (pred.shape[1], pred.shape[0]), pred.tobytes())
        ids.putpalette(flat_palette)
        ids_path = output / f"{names[path]}.png"
        ids.save(ids_path)
        color = draw_segmentation_map(pred, palette)
        Image.fromarray(color).save(output / f"{names[path]}_color.png")
        # The overlay shows the first three channels (or the first as gray) of other than RGB images.
        overlay = image_overlay(display_rgb(image), color, cfg.alpha, keep=np.isin(pred, background))
        found = [
            (labels[c], palette[c])
            for c in np.unique(pred).tolist()
            if c < len(labels) and c not in background
        ]
        Image.fromarray(draw_legend(overlay, found)).save(output / f"{names[path]}_overlay.jpg", quality=92)
        written.append(ids_path)
    print(f"wrote {len(written)} x 3 files to {output}")
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (
            f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        )
        raise DatasetError(
            f"{len(unreadable)} of {len(images)} images could not be read and were skipped: {shown} (the others "
            f"are in {output})"
        )
    return written


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from deeplab.cli import exit_on_user_error

    with exit_on_user_error():
        config = predict_config(cfg)
        predict(config, Path(config.output))


if __name__ == "__main__":
    main()
