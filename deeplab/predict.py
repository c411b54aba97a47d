"""Segment your own photos: `python -m deeplab.predict checkpoint=PATH input=FILE_OR_DIR output=DIR`.

For each image it writes <stem>.png (class ids, palette PNG), <stem>_color.png (colour mask) and
<stem>_overlay.jpg (the mask over the photo). The checkpoint may be one train.py wrote or torchvision's
published deeplabv3_resnet50/101 weights file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from deeplab.errors import ConfigError, DatasetError, UserError

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


def predict(cfg: DictConfig, output: Path) -> list[Path]:
    """Segment every image of cfg.input into `output`; returns the class-id PNG paths."""
    from deeplab import data
    from deeplab.engine import autocast, normalize, pixel_stats, resolve_amp, resolve_device, resolve_flag
    from deeplab.inference import predict_probs
    from deeplab.restore import load_trained_model
    from deeplab.visualize import draw_segmentation_map, image_overlay

    device = resolve_device(str(cfg.device), key="device")
    amp_dtype = resolve_amp(cfg.amp, device, key="amp")
    channels_last = resolve_flag(cfg.channels_last, device, "channels_last")
    images = list_images(Path(str(cfg.input)))
    model, train_cfg = load_trained_model(cfg.checkpoint)
    if cfg.eval.output_stride is not None:
        model.set_output_stride(int(cfg.eval.output_stride))
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    palette = data.palette(train_cfg)
    if len(palette) < 2:  # one-logit binary models predict {0, 1}
        palette = np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8)
    names = (
        data.class_names(train_cfg)
        if int(train_cfg.dataset.num_classes) > 1
        else ["background", "foreground"]
    )
    mean_t = pixel_stats(train_cfg.dataset.mean, device)
    std_t = pixel_stats(train_cfg.dataset.std, device)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    flat_palette = palette.astype(np.uint8).reshape(-1).tolist()
    for path in images:
        rgb = read_rgb(path)
        x = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(device)  # (1, 3, H, W) uint8
        with torch.no_grad(), autocast(device, amp_dtype):
            probs = predict_probs(
                model, normalize(x, mean_t, std_t, channels_last), scales=[float(s) for s in cfg.eval.scales],
                flip=bool(cfg.eval.flip), mode=str(cfg.eval.mode), window=int(cfg.eval.window),
                overlap=float(cfg.eval.overlap),
            )  # fmt: skip
        pred = probs.argmax(1)[0].to(torch.uint8).cpu().numpy()  # (H, W)
        ids = Image.frombytes("P", (pred.shape[1], pred.shape[0]), pred.tobytes())
        ids.putpalette(flat_palette + [0] * (768 - len(flat_palette)))
        ids_path = output / f"{path.stem}.png"
        ids.save(ids_path)
        color = draw_segmentation_map(pred, palette)
        Image.fromarray(color).save(output / f"{path.stem}_color.png")
        Image.fromarray(image_overlay(rgb, color, float(cfg.alpha))).save(
            output / f"{path.stem}_overlay.jpg", quality=92
        )
        present = [names[c] if c < len(names) else str(c) for c in np.unique(pred).tolist()]
        print(f"{path.name}: {', '.join(present)}")
        written.append(ids_path)
    print(f"wrote {len(written)} x 3 files to {output}")
    return written


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    output = (
        Path(str(cfg.output)) if cfg.output else Path(HydraConfig.get().runtime.output_dir) / "predictions"
    )
    try:
        predict(cfg, output)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
