"""GeoTIFFs larger than memory: `python -m deeplab.predict checkpoint=PATH input=scene.tif` (the [geo] extra,
rasterio) predicts a georeferenced TIFF window by window.

The windows are those of slide evaluation (deeplab.inference.slide_logits) over the whole scene: eval.window
square, eval.overlap apart, the last row and column flush with the scene's edge; the logits of overlapping
windows are averaged. The scene is read one row of windows at a time, and the averaged logits are kept for
one window's height only: rows that no later window reaches are finished and written. Memory is bounded by
eval.window x the scene's width, not by the scene. The output is <stem>.tif: class ids, uint8, tiled and
compressed, with the input's CRS and transform and the class colours as its colour map; with raster_color=true
also <stem>_color.tif (RGB).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from deeplab.config import PredictConfig
from deeplab.errors import ConfigError, DatasetError
from deeplab.inference import logits_to_probs

BLOCK = 256  # output tile size (GeoTIFF blocks must be multiples of 16)
GDAL_CACHE_MB = 64  # GDAL's block cache would otherwise grow to 5% of RAM and hold the scene's blocks


def window_starts(size: int, window: int, step: int) -> list[int]:
    """Start offsets of the windows along one axis, as slide_logits places them (size padded to window)."""
    padded = max(size, window)
    count = max(math.ceil((padded - window) / step), 0) + 1
    return [min(i * step, padded - window) for i in range(count)]


def check_settings(cfg: PredictConfig) -> None:
    ev = cfg.eval
    if list(ev.scales) != [1.0] or ev.flip:
        raise ConfigError(
            "eval.scales/eval.flip: a GeoTIFF is predicted in windows at scale 1 without flips (a rescaled or "
            "mirrored scene would have to be held whole); drop eval.scales and eval.flip"
        )


def _to_uint8(values: np.ndarray, path: Path) -> np.ndarray:
    from deeplab.data.reading import _to_uint8 as scale  # the project's one rule for 16-bit bands

    return scale(values, path)


def predict_raster(cfg: PredictConfig, seg: Any, path: Path, output: Path) -> list[Path]:
    """Predict the GeoTIFF `path` with seg (deeplab.predict.Segmenter) into output/<stem>.tif (and
    <stem>_color.tif with cfg.raster_color); returns [the class-id GeoTIFF]."""
    import rasterio
    from rasterio.windows import Window

    check_settings(cfg)
    window, step = cfg.eval.window, max(int(cfg.eval.window * (1.0 - cfg.eval.overlap)), 1)
    output.mkdir(parents=True, exist_ok=True)
    target = output / f"{path.stem}.tif"
    color_target = output / f"{path.stem}_color.tif"
    num_labels = len(seg.labels)
    if num_labels > 256:
        raise ConfigError(f"checkpoint: {num_labels} classes do not fit the uint8 GeoTIFF of class ids")
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(path) as src:
        if src.count != seg.in_channels:
            raise DatasetError(
                f"GeoTIFF {path} has {src.count} bands but the model takes {seg.in_channels} channels; give a "
                f"raster with {seg.in_channels} bands"
            )
        height, width = src.height, src.width
        profile = {
            "driver": "GTiff", "height": height, "width": width, "crs": src.crs, "transform": src.transform,
            "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }  # fmt: skip
        ys, xs = window_starts(height, window, step), window_starts(width, window, step)
        padded_w = max(width, window)
        colors = {i: tuple(int(v) for v in seg.palette[i]) for i in range(num_labels)}
        with rasterio.open(target, "w", count=1, dtype="uint8", **profile) as dst:
            dst.write_colormap(1, colors)
            color_dst = (
                rasterio.open(color_target, "w", count=3, dtype="uint8", photometric="RGB", **profile)
                if cfg.raster_color
                else None
            )
            try:
                rows_of_windows(seg, src, dst, color_dst, ys, xs, window, padded_w, Window)
            finally:
                if color_dst is not None:
                    color_dst.close()
    extra = f" and {color_target.name}" if cfg.raster_color else ""
    print(f"wrote {target}{extra} ({width}x{height}, {len(ys) * len(xs)} windows of {window})")
    return [target]


def rows_of_windows(
    seg: Any, src: Any, dst: Any, color_dst: Any, ys: list[int], xs: list[int], window: int, padded_w: int,
    Window: Any,
) -> None:  # fmt: skip
    """The scene row of windows by row of windows; finished rows are written to dst (and color_dst)."""
    height, width = src.height, src.width
    device = seg.rt.device
    acc: torch.Tensor | None = None  # (K, window, padded_w) summed logits of rows [top, top + window)
    count = torch.zeros((1, window, padded_w), device=device)
    top = 0
    for r, y0 in enumerate(tqdm(ys, desc=Path(src.name).name, unit=" window rows")):
        if acc is not None:  # move the rows that later windows still reach to the top of the buffers
            keep = top + window - y0
            acc[:, :keep] = acc[:, y0 - top :].clone()
            acc[:, keep:] = 0
            count[:, :keep] = count[:, y0 - top :].clone()
            count[:, keep:] = 0
        top = y0
        rows = min(window, height - y0)
        band = _to_uint8(src.read(window=Window(0, y0, width, rows)), Path(src.name))  # (C, rows, W) uint8
        for x0 in xs:
            cols = min(window, width - x0)
            crop = torch.from_numpy(np.ascontiguousarray(band[:, :, x0 : x0 + cols])).unsqueeze(0).to(device)
            x = seg.normalize(crop)  # (1, C, rows, cols); padded with 0, the normalised mean, as slide_logits
            if rows < window or cols < window:
                x = F.pad(x, (0, window - cols, 0, window - rows))
            with torch.no_grad(), seg.rt.autocast():
                logits = seg.model(x)["out"].float()[0]  # (K, window, window)
            if acc is None:
                acc = torch.zeros((logits.shape[0], window, padded_w), device=device)
            acc[:, :, x0 : x0 + window] += logits
            count[:, :, x0 : x0 + window] += 1
        assert acc is not None
        # Rows above the next row of windows are final.
        end = min((ys[r + 1] if r + 1 < len(ys) else y0 + window) - y0, height - y0)
        averaged = (acc[:, :end, :width] / count[:, :end, :width]).unsqueeze(0)
        ids = logits_to_probs(averaged).argmax(1)[0].to(torch.uint8).cpu().numpy()  # (end, W)
        dst.write(ids[None], window=Window(0, y0, width, end))
        if color_dst is not None:
            color_dst.write(seg.palette[ids].transpose(2, 0, 1), window=Window(0, y0, width, end))
