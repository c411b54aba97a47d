"""Segment your own photos: `python -m deeplab.predict checkpoint=PATH input=FILE_OR_DIR output=DIR`.

For each image it writes <stem>.png (class ids, palette PNG), <stem>_color.png (colour mask) and
<stem>_overlay.jpg (the mask over the photo). The checkpoint may be one train.py wrote or torchvision's
published deeplabv3_resnet50/101 weights file.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from deeplab.config import PredictConfig, predict_config
from deeplab.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
        raise ConfigError(f"input: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
    raise ConfigError(f"input: {path} does not exist; give an image file or a folder of images")


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def predict(cfg: PredictConfig | DictConfig, output: Path) -> list[Path]:
    """Segment every image of cfg.input into `output`; returns the class-id PNG paths."""
    from deeplab import data
    from deeplab.inference import predict_probs
    from deeplab.restore import load_trained_model
    from deeplab.runtime import make_runtime
    from deeplab.visualize import draw_segmentation_map, image_overlay

    cfg = predict_config(cfg)
    rt = make_runtime(cfg.device, cfg.amp, cfg.channels_last, key="")
    images = list_images(Path(cfg.input))
    model, train_cfg = load_trained_model(cfg.checkpoint)
    ev, d = cfg.eval, train_cfg.dataset
    if ev.output_stride is not None:
        model.set_output_stride(ev.output_stride)
    rt.place(model)
    palette = data.palette(d)
    names = d.label_names()
    normalize = rt.normalizer(d.mean, d.std)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    flat_palette = palette[:256].reshape(-1).tolist()
    for path in images:
        rgb = read_rgb(path)
        x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(rt.device)  # (1, 3, H, W) uint8
        with torch.no_grad(), rt.autocast():
            probs = predict_probs(
                model, normalize(x), scales=ev.scales, flip=ev.flip, mode=ev.mode, window=ev.window,
                overlap=ev.overlap,
            )  # fmt: skip
        pred = probs.argmax(1)[0].to(torch.uint8).cpu().numpy()  # (H, W)
        ids = Image.frombytes("P", (pred.shape[1], pred.shape[0]), pred.tobytes())
        ids.putpalette(flat_palette)
        ids_path = output / f"{path.stem}.png"
        ids.save(ids_path)
        color = draw_segmentation_map(pred, palette)
        Image.fromarray(color).save(output / f"{path.stem}_color.png")
        Image.fromarray(image_overlay(rgb, color, cfg.alpha)).save(
            output / f"{path.stem}_overlay.jpg", quality=92
        )
        present = [names[c] if c < len(names) else str(c) for c in np.unique(pred).tolist()]
        print(f"{path.name}: {', '.join(present)}")
        written.append(ids_path)
    print(f"wrote {len(written)} x 3 files to {output}")
    return written


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from deeplab.cli import exit_on_user_error

    with exit_on_user_error():
        config = predict_config(cfg)
        predict(config, Path(config.output))


if __name__ == "__main__":
    main()
