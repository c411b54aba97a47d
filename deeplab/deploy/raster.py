"""GeoTIFFs larger than memory: `python -m deeplab.predict checkpoint=PATH input=scene.tif` (the [geo] extra,
rasterio) predicts a georeferenced TIFF window by window.

The windows are those of slide evaluation (deeplab.models.inference.slide_logits) over the whole scene: eval.window
square, eval.overlap apart, the last row and column flush with the scene's edge; the logits of overlapping
windows are averaged. The scene is cut into vertical stripes of STRIPE_WINDOWS windows' width (whole output
blocks), each swept from top to bottom: a stripe's windows are those that reach its columns (the one or two
before it are computed again, about 1/8 more work), the summed logits are kept for one window's height, and
rows that no later window reaches are finished and written. Memory is bounded by the window (about
classes x window x (STRIPE_WINDOWS + 1) x window floats), not by the scene's height or width. The output is
<stem>.tif: class ids, uint8, tiled and compressed, with the input's CRS and transform and the class colours
as its colour map; with raster_color=true also <stem>_color.tif (RGB).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from deeplab.atomicfile import atomic_path
from deeplab.config import PredictConfig
from deeplab.errors import ConfigError, DatasetError, first_line
from deeplab.models.inference import logits_to_probs

BLOCK = 256  # output tile size (GeoTIFF blocks must be multiples of 16)
GDAL_CACHE_MB = 32  # GDAL's block cache would otherwise grow to 5% of RAM and hold the scene's blocks
STRIPE_WINDOWS = 8  # a stripe's width in windows: memory against the windows computed twice (1 in 8)


def stripes(width: int, window: int) -> list[tuple[int, int]]:
    """Column ranges [c0, c1) that cover the scene, each STRIPE_WINDOWS windows wide in whole output blocks
    (a block is written by one stripe)."""
    cols = max(round(STRIPE_WINDOWS * window / BLOCK), 1) * BLOCK
    return [(c0, min(c0 + cols, width)) for c0 in range(0, width, cols)]


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


NODATA_ID = 255  # the class-id GeoTIFF's nodata value, where the scene has nodata (the ignore label's value)


def predict_raster(cfg: PredictConfig, seg: Any, path: Path, output: Path) -> list[Path]:
    """Predict the GeoTIFF `path` with seg (deeplab.deploy.predict.Segmenter) into output/<stem>.tif (and
    <stem>_color.tif with cfg.raster_color); returns [the class-id GeoTIFF]. A scene GDAL cannot read to the
    end (truncated, damaged) is a DatasetError naming it."""
    import rasterio

    seg.single_label("a GeoTIFF prediction (a class-id raster)")
    try:
        return _predict_raster(cfg, seg, path, output)
    except rasterio.errors.RasterioError as e:
        raise DatasetError(
            f"GeoTIFF {path} cannot be read ({first_line(e)}): is it truncated or damaged? Copy it again"
        ) from None


def _predict_raster(cfg: PredictConfig, seg: Any, path: Path, output: Path) -> list[Path]:
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
        colors = {i: tuple(int(v) for v in seg.palette[i]) for i in range(num_labels)}
        if src.nodata is not None:  # the scene's nodata stays nodata: NODATA_ID in the ids, masked in colour
            if num_labels > NODATA_ID:
                raise ConfigError(
                    f"GeoTIFF {path} has nodata pixels, and the model's {num_labels} classes leave no uint8 value "
                    f"to mark them ({NODATA_ID} is the last)"
                )
            profile["nodata"] = NODATA_ID
        # Written under temporary names and renamed when complete: a refused or stopped scene leaves the
        # previous outputs (or none), never a partial raster that opens as a valid one.
        with (
            atomic_path(target) as ids_tmp,
            atomic_path(color_target) if cfg.raster_color else contextlib.nullcontext() as color_tmp,
            rasterio.open(ids_tmp, "w", count=1, dtype="uint8", **profile) as dst,
        ):
            dst.write_colormap(1, colors)
            color_profile = {
                k: v for k, v in profile.items() if k != "nodata"
            }  # a mask instead: 255 is a colour
            color_dst = (
                rasterio.open(color_tmp, "w", count=3, dtype="uint8", photometric="RGB", **color_profile)
                if color_tmp is not None
                else None
            )
            try:
                parts = [
                    (c0, c1, [x for x in xs if x < c1 and x + window > c0])
                    for c0, c1 in stripes(width, window)
                ]
                bar = tqdm(total=sum(len(ys) * len(p[2]) for p in parts), desc=path.name, unit=" windows")
                for c0, c1, stripe_xs in parts:
                    sweep_stripe(seg, src, (dst, color_dst), ys, stripe_xs, window, (c0, c1), bar, Window)
                bar.close()
            finally:
                if color_dst is not None:
                    color_dst.close()
    extra = f" and {color_target.name}" if cfg.raster_color else ""
    print(f"wrote {target}{extra} ({width}x{height}, {len(ys) * len(xs)} windows of {window})")
    return [target]


def sweep_stripe(
    seg: Any, src: Any, outputs: tuple[Any, Any], ys: list[int], xs: list[int], window: int,
    own: tuple[int, int], bar: Any, Window: Any,
) -> None:  # fmt: skip
    """One stripe from top to bottom: the windows starting at xs (those that reach the stripe's columns
    own = [c0, c1)) row of windows by row of windows; finished rows of its columns are written to the outputs
    (class ids, and colours or None)."""
    height, width = src.height, src.width
    dst, color_dst = outputs
    device = seg.rt.device
    left, right = xs[0], xs[-1] + window  # the columns the windows cover (past the scene's edge: padding)
    acc: torch.Tensor | None = None  # (K, window, right - left) summed logits of rows [top, top + window)
    count = torch.zeros((1, window, right - left), device=device)
    top = 0
    for r, y0 in enumerate(ys):
        if acc is not None:  # move the rows that later windows still reach to the top of the buffers
            keep = top + window - y0
            acc[:, :keep] = acc[:, y0 - top :].clone()
            acc[:, keep:] = 0
            count[:, :keep] = count[:, y0 - top :].clone()
            count[:, keep:] = 0
        top = y0
        rows = min(window, height - y0)
        read = Window(left, y0, min(right, width) - left, rows)
        band = _to_uint8(src.read(window=read), Path(src.name))  # (C, rows, <= right - left) uint8
        for x0 in xs:
            cols = min(window, width - x0)
            crop = torch.from_numpy(np.ascontiguousarray(band[:, :, x0 - left : x0 - left + cols]))
            x = seg.normalize(crop.unsqueeze(0).to(device))  # (1, C, rows, cols); padded with 0, the
            if rows < window or cols < window:  # normalised mean, as slide_logits pads
                x = F.pad(x, (0, window - cols, 0, window - rows))
            with torch.no_grad(), seg.rt.autocast():
                logits = seg.model(x)["out"].float()[0]  # (K, window, window)
            if acc is None:
                acc = torch.zeros((logits.shape[0], window, right - left), device=device)
            acc[:, :, x0 - left : x0 - left + window] += logits
            count[:, :, x0 - left : x0 - left + window] += 1
            bar.update()
        assert acc is not None
        # Rows above the next row of windows are final; the stripe writes its own columns.
        end = min((ys[r + 1] if r + 1 < len(ys) else y0 + window) - y0, height - y0)
        c0, c1 = own
        averaged = (acc[:, :end, c0 - left : c1 - left] / count[:, :end, c0 - left : c1 - left]).unsqueeze(0)
        ids = logits_to_probs(averaged).argmax(1)[0].to(torch.uint8).cpu().numpy()  # (end, c1 - c0)
        own_window = Window(c0, y0, c1 - c0, end)
        valid = src.dataset_mask(window=own_window) if src.nodata is not None else None  # 0: nodata
        colors = seg.palette[ids].transpose(2, 0, 1)
        if valid is not None:
            ids[valid == 0] = NODATA_ID
        dst.write(ids[None], window=own_window)
        if color_dst is not None:
            color_dst.write(colors, window=own_window)
            if valid is not None:
                color_dst.write_mask(valid, window=own_window)
