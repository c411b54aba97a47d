"""Colour masks, overlays and legends for predictions (TensorBoard grids, deeplab.predict)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

IGNORE_COLOR = (255, 255, 255)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 to show an (H, W, C) image: its first three channels, or its first one as gray."""
    if image.shape[2] >= 3:
        return np.ascontiguousarray(image[..., :3])
    return np.repeat(image[..., :1], 3, axis=2)


def draw_segmentation_map(mask: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; the ignore label is drawn white."""
    palette = np.asarray(palette, dtype=np.uint8)
    valid = (mask >= 0) & (mask < len(palette))
    out = np.empty((*mask.shape, 3), dtype=np.uint8)
    out[:] = IGNORE_COLOR
    out[valid] = palette[mask[valid]]
    if ignore_index < len(palette):
        # A class id used as the ignore label (CamVid-style) keeps the ignore colour.
        out[mask == ignore_index] = IGNORE_COLOR
    return out


def draw_multilabel_map(masks: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(C, H, W) multi-label masks (0 / 1 / ignore) -> (H, W, 3) uint8: each pixel the mean colour of the
    classes present there (two overlapping classes blend), black where none is, white where all are ignored."""
    palette = np.asarray(palette, dtype=np.float32)[: len(masks)]  # (C, 3)
    present = (masks == 1).astype(np.float32)  # (C, H, W)
    count = present.sum(0)  # (H, W)
    mixed = np.einsum("chw,cd->hwd", present, palette) / np.maximum(count, 1)[..., None]
    out = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    out[(masks == ignore_index).all(0)] = IGNORE_COLOR
    return out


def draw_labels(mask: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """draw_segmentation_map of (H, W) class ids, draw_multilabel_map of (C, H, W) multi-label masks."""
    if mask.ndim == 3:
        return draw_multilabel_map(mask, palette, ignore_index)
    return draw_segmentation_map(mask, palette, ignore_index)


def image_overlay(
    image: np.ndarray, color_mask: np.ndarray, alpha: float = 0.6, keep: np.ndarray | None = None
) -> np.ndarray:
    """Blend a (H, W, 3) uint8 colour mask over a (H, W, 3) uint8 photo with opacity alpha; pixels where the
    (H, W) bool `keep` is true (the background) stay as the photo."""
    if image.shape != color_mask.shape:
        raise ValueError(f"image {image.shape} and mask {color_mask.shape} differ in shape")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * color_mask.astype(np.float32)
    out = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if keep is not None:
        out[keep] = image[keep]
    return out


LEGEND_SHARE = 0.15  # most of an image a legend may cover; a larger one goes beside the image
MIN_FONT, MAX_FONT = 8, 32  # font sizes in pixels: the smallest that reads well, and enough for 4K photos


@dataclass
class Legend:
    """A legend drawn once, for images of one size: an RGBA tile laid over a corner of the image, or (beside)
    an opaque panel put to the right of it."""

    tile: np.ndarray  # (h, w, 4) uint8
    beside: bool


def make_legend(entries: Sequence[tuple[str, Sequence[int]]], height: int, width: int) -> Legend | None:
    """A legend of (name, colour) entries for (height, width) images: scaled with the image, and as large as
    fits in LEGEND_SHARE of it, down to MIN_FONT; beside the image (in columns) where even that is too large.
    None without entries, or for images lower than one line."""
    if not entries:
        return None
    font_file, text = legend_font("\n".join(name for name, _ in entries))
    entries = [(name, color) for name, (_, color) in zip(text.split("\n"), entries)]
    start = min(max(round(height / 24), MIN_FONT), MAX_FONT)
    for size in range(start, MIN_FONT - 1, -1):
        font, line, pad, column = _legend_metrics(entries, size, font_file)
        box_h, box_w = pad * 2 + line * len(entries), column
        if box_h <= height and box_w <= width and box_h * box_w <= LEGEND_SHARE * height * width:
            tile = _legend_tile(entries, font_file, size, len(entries), box_h, (0, 0, 0, 160))
            return Legend(tile, beside=False)
    # Beside the image: in columns as high as the image, at the largest size whose panel is not wider than
    # the image (many classes, e.g. ADE20K's 150 on a video's every frame), else the smallest.
    for size in range(start, MIN_FONT - 1, -1):
        font, line, pad, column = _legend_metrics(entries, size, font_file)
        rows = (height - pad * 2) // line
        if rows >= 1 and (column * -(-len(entries) // rows) <= width or size == MIN_FONT):
            return Legend(
                _legend_tile(entries, font_file, size, rows, height, (32, 32, 32, 255)), beside=True
            )
    return None  # lower than one line


# Fonts with more glyphs than Pillow's own (which has ASCII only: no é, no CJK), looked for where systems keep them.
FONT_FILES = (
    "DejaVuSans.ttf", "NotoSans-Regular.ttf", "NotoSansCJK-Regular.ttc", "NotoSansCJKsc-Regular.otf",
    "DroidSansFallbackFull.ttf", "wqy-microhei.ttc", "Arial Unicode.ttf", "arialuni.ttf", "msyh.ttc",
)  # fmt: skip
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "/System/Library/Fonts", "/Library/Fonts",
             "C:/Windows/Fonts")  # fmt: skip
NO_GLYPH = "\U0010fffd"  # a private-use code point no font draws: how a missing glyph looks in a font


@functools.lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """The FONT_FILES this machine has, in that order."""
    found: dict[str, str] = {}
    for folder in FONT_DIRS:
        root = Path(folder).expanduser()
        if root.is_dir():
            for path in root.rglob("*"):
                if path.name in FONT_FILES and path.name not in found:
                    found[path.name] = str(path)
    return tuple(found[name] for name in FONT_FILES if name in found)


@functools.lru_cache(maxsize=256)
def _font(font_file: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if font_file is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(font_file, size)


def _missing_glyphs(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> set[str]:
    """The characters of text that `font` draws as its missing-glyph box."""

    def look(ch: str) -> tuple[tuple[int, int], bytes]:
        mask = font.getmask(ch)
        return mask.size, bytes(mask)

    box = look(NO_GLYPH)
    return {ch for ch in set(text) if not ch.isspace() and look(ch) == box}


@functools.lru_cache(maxsize=64)
def legend_font(text: str) -> tuple[str | None, str]:
    """(the font file to draw `text` with, None for Pillow's default; the text to draw): the first font that
    has every glyph, else the one that lacks fewest, with "?" for the characters it lacks, said in a warning."""
    fonts = (None, *font_files())
    missing = {font_file: _missing_glyphs(_font(font_file, 16), text) for font_file in fonts}
    chosen = min(fonts, key=lambda f: len(missing[f]))  # the first of the fewest missing
    if not missing[chosen]:
        return chosen, text
    log.warning(
        "legend: no font on this machine draws %s in the class names; they are shown as '?' (install a font "
        "that has them, e.g. fonts-noto-cjk for Chinese, Japanese and Korean)", " ".join(sorted(missing[chosen])),
    )  # fmt: skip
    return chosen, "".join("?" if ch in missing[chosen] else ch for ch in text)


def _legend_metrics(
    entries: Sequence[tuple[str, Sequence[int]]], size: int, font_file: str | None = None
) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int, int, int]:
    """(font, line height, padding, column width) of a legend at font size `size`."""
    font = _font(font_file, size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line, pad = size + size // 2, max(2, size // 3)
    column = pad * 3 + size + max(int(measure.textlength(name, font=font)) + 1 for name, _ in entries)
    return font, line, pad, column


def _legend_tile(
    entries: Sequence[tuple[str, Sequence[int]]],
    font_file: str | None,
    size: int,
    rows: int,
    height: int,
    fill: tuple[int, int, int, int],
) -> np.ndarray:
    """(height, w, 4) RGBA: a swatch of each entry's colour and its name, in columns of `rows` lines."""
    font, line, pad, column = _legend_metrics(entries, size, font_file)
    columns = -(-len(entries) // rows)
    tile = Image.new("RGBA", (column * columns, height), fill)
    draw = ImageDraw.Draw(tile)
    for k, (name, color) in enumerate(entries):
        x, y = (k // rows) * column + pad, pad + (k % rows) * line
        top = y + (line - size) // 2
        draw.rectangle((x, top, x + size - 1, top + size - 1), fill=tuple(int(c) for c in color))
        draw.text((x + size + pad, y + line // 2), name, fill=(255, 255, 255, 255), font=font, anchor="lm")
    return np.asarray(tile)


def place_legend(image: np.ndarray, legend: Legend | None, avoid: np.ndarray | None = None) -> np.ndarray:
    """The (H, W, 3) uint8 image with the legend: in the corner covering the fewest pixels of the (H, W)
    bool `avoid` (the predicted classes; None: the top-left corner), or as a panel to its right."""
    if legend is None:
        return image
    tile = legend.tile
    if legend.beside:
        return np.concatenate([image, tile[..., :3]], axis=1)
    (h, w), (th, tw) = image.shape[:2], tile.shape[:2]
    corners = [(0, 0), (0, w - tw), (h - th, 0), (h - th, w - tw)]
    if avoid is not None:
        # sorted is stable: the top-left corner wins ties
        corners.sort(key=lambda c: int(avoid[c[0] : c[0] + th, c[1] : c[1] + tw].sum()))
    top, left = corners[0]
    out = image.copy()
    region = out[top : top + th, left : left + tw].astype(np.float32)
    alpha = tile[..., 3:].astype(np.float32) / 255.0
    blended = region * (1.0 - alpha) + tile[..., :3].astype(np.float32) * alpha
    out[top : top + th, left : left + tw] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def draw_legend(
    image: np.ndarray, entries: Sequence[tuple[str, Sequence[int]]], avoid: np.ndarray | None = None
) -> np.ndarray:
    """The (H, W, 3) uint8 image with a legend of (name, colour) entries (see make_legend, place_legend)."""
    return place_legend(image, make_legend(entries, *image.shape[:2]), avoid)


def ids_image(pred: np.ndarray, palette: np.ndarray) -> Image.Image:
    """(H, W) uint8 class ids as a palette image (the ids are the pixel values, the palette draws them)."""
    ids = Image.frombytes("P", (pred.shape[1], pred.shape[0]), np.ascontiguousarray(pred).tobytes())
    ids.putpalette(palette[:256].reshape(-1).tolist())
    return ids
