"""Reading images and label masks from disk, with one-line errors that name the file."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import scipy.io
from PIL import Image, ImageOps, ImageSequence

from deeplab.errors import DatasetError, first_line

# Mask modes that hold class ids directly: palette indices, grayscale, 1-bit, 16/32-bit integers.
_ID_MODES = {"P", "L", "1", "I", "I;16", "I;16B", "I;16L"}
_RGB_MODES = {"RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}
_WIDE_GRAY = {"I", "I;16", "I;16B", "I;16L"}  # 16-bit (and 32-bit integer) grayscale images
EXIF_ORIENTATION = 0x0112


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag of an image (1, the default, when there is none or it cannot be read)."""
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError):
        return 1


@contextlib.contextmanager
def decoding(path: Path, what: str) -> Iterator[None]:
    """A missing or undecodable file (image, mask) read inside the block is a one-line DatasetError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise DatasetError(f"{what} {path} does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(
            f"cannot read {what} {path}: {first_line(e)} (the file is corrupt or truncated: replace it, or "
            "re-extract the dataset)"
        ) from None


def _to_rgb8(im: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 of any image mode; 16-bit grayscale is scaled to 8 bits (65535 -> 255), not clipped."""
    if im.mode in _WIDE_GRAY:
        values = np.asarray(im, dtype=np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise DatasetError(
                f"cannot read image {path}: a {im.mode} image with values outside 0..65535; save it as an "
                "8- or 16-bit image"
            )
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "F":
        raise DatasetError(
            f"cannot read image {path}: floating-point images are not supported; save it as an 8- or 16-bit image"
        )
    return np.array(im if im.mode == "RGB" else im.convert("RGB"))


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array, turned upright as its EXIF orientation says
    (as annotation tools and viewers display it); a missing, corrupt or truncated file is a DatasetError.
    channels != 3 (or a .npy file): an (H, W, channels) uint8 array, see read_bands."""
    if channels != 3 or path.suffix.lower() == ".npy":
        return read_bands(path, channels)
    with decoding(path, "image"), Image.open(path) as im:
        im.load()  # decode now, so a truncated file fails here and not later
        return _to_rgb8(ImageOps.exif_transpose(im), path)


def read_image_bytes(data: bytes, name: str) -> np.ndarray:
    """An encoded image held in memory (an HTTP upload) as read_image reads a file of that name: (H, W, 3)
    uint8 RGB, upright, 16-bit scaled; undecodable bytes are a DatasetError naming `name`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _to_rgb8(ImageOps.exif_transpose(im), Path(name))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(
            f"cannot decode image {name}: {first_line(e)}; send the whole, undamaged file"
        ) from None


def _to_uint8(values: np.ndarray, path: Path) -> np.ndarray:
    """uint8 as is; 16-bit (or wider integer) values in 0..65535 scaled to 8 bits like 16-bit grayscale."""
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind in "iu" and values.min(initial=0) >= 0 and values.max(initial=0) <= 65535:
        return ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    raise DatasetError(
        f"cannot read image {path}: {values.dtype} values; multi-channel images must hold 8- or 16-bit "
        "integers (scale floating-point bands to 0..65535 first)"
    )


def read_bands(path: Path, channels: int) -> np.ndarray:
    """An (H, W, channels) uint8 image of any channel count: a .npy array (H, W, C) of uint8 or uint16, or
    the pages of a (multi-page) TIFF or other image stacked in order (each page gray, RGB or RGBA). 16-bit
    bands are scaled to 8 bits. A count other than `channels` is a DatasetError naming the file."""
    with decoding(path, "image"):
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.ndim == 2:
                array = array[..., None]
            if array.ndim != 3:
                raise DatasetError(
                    f"image {path} holds an array of shape {array.shape}; save it as (height, width, channels)"
                )
            if array.shape[2] != channels and array.shape[0] == channels:
                raise DatasetError(
                    f"image {path} holds an array of shape {array.shape}, which looks channels-first (C, H, W); "
                    f"expected (height, width, {channels}): save it with np.moveaxis(array, 0, -1)"
                )
            if array.shape[2] != channels:
                raise DatasetError(
                    f"image {path} holds an array of shape {array.shape} but dataset.in_channels is {channels}; "
                    f"expected (height, width, {channels}), the channels on the last axis"
                )
            bands = _to_uint8(array, path)
        else:
            with Image.open(path) as im:
                pages = []
                for page in ImageSequence.Iterator(im):
                    page.load()
                    if page.mode in _WIDE_GRAY:
                        pages.append(_to_uint8(np.asarray(page, dtype=np.int64), path)[..., None])
                    elif page.mode in ("L", "RGB", "RGBA"):
                        values = np.asarray(page)
                        pages.append(values[..., None] if values.ndim == 2 else values)
                    elif page.mode in ("1", "P", "LA", "CMYK"):
                        values = np.asarray(page.convert("L" if page.mode in ("1", "P") else page.mode))
                        pages.append(values[..., None] if values.ndim == 2 else values)
                    else:
                        raise DatasetError(
                            f"cannot read image {path}: a page of mode {page.mode}; pages must be 8- or 16-bit "
                            "gray, RGB or RGBA"
                        )
                if len({p.shape[:2] for p in pages}) != 1:
                    raise DatasetError(
                        f"image {path}: its pages differ in size; every band must have the same size"
                    )
                bands = np.concatenate(pages, axis=2)
    if bands.shape[2] != channels:
        raise DatasetError(
            f"image {path} has {bands.shape[2]} channels but dataset.in_channels is {channels}; give every "
            "image that many bands (pages of a TIFF, or the last axis of a .npy array)"
        )
    return np.ascontiguousarray(bands)


def read_sbd_label(path: Path) -> np.ndarray:
    """SBD class label: scipy.io.loadmat(path)["GTcls"][0]["Segmentation"][0], an (H, W) uint8 array of ids."""
    try:
        mat = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise DatasetError(f"SBD label {path} does not exist") from None
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        raise DatasetError(
            f"cannot read SBD label {path}: {first_line(e)} (the file is corrupt: re-extract benchmark.tgz)"
        ) from None
    try:
        label = mat["GTcls"][0]["Segmentation"][0]
    except (KeyError, IndexError, ValueError, TypeError):
        raise DatasetError(
            f"SBD label {path} has no GTcls.Segmentation field: it is not a class label of the SBD "
            "benchmark_RELEASE/dataset/cls folder"
        ) from None
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype.kind not in "iub":
        raise DatasetError(
            f"SBD label {path} holds a {label.dtype} array of shape {label.shape}, not a 2-D id map"
        )
    return np.ascontiguousarray(label, dtype=np.uint8)


def colors_to_ids(rgb: np.ndarray, colors: np.ndarray, ids: np.ndarray, path: Path) -> np.ndarray:
    """Map an (H, W, 3) colour-coded mask to (H, W) ids; colors (K, 3) and ids (K,) give the table."""
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    table_keys = (colors[:, 0].astype(np.int32) << 16) | (colors[:, 1].astype(np.int32) << 8) | colors[:, 2]
    present, inverse = np.unique(keys, return_inverse=True)
    order = np.argsort(table_keys, kind="stable")
    sorted_keys = table_keys[order]
    pos = np.minimum(np.searchsorted(sorted_keys, present), len(sorted_keys) - 1)
    known = sorted_keys[pos] == present
    if not known.all():
        unknown = present[~known]
        shown = ", ".join(f"({k >> 16}, {(k >> 8) & 255}, {k & 255})" for k in unknown[:4])
        more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
        raise DatasetError(
            f"mask {path} has colours {shown}{more} that are not in dataset.palette; add them to the palette "
            "(or dataset.ignore_color for ignored pixels)"
        )
    dtype = np.uint8 if ids.max(initial=0) < 256 else np.uint16
    return ids[order][pos].astype(dtype)[inverse].reshape(keys.shape)


def read_mask(
    path: Path,
    colors: np.ndarray | None = None,
    color_ids: np.ndarray | None = None,
    binary_values: tuple[int, int] | None = None,
    ignore_index: int = 255,
) -> np.ndarray:
    """Read an (H, W) id mask (uint8, or uint16 beyond 255): palette/grayscale PNG, SBD .mat; colour-coded
    masks of any mode (palette PNGs included) when `colors` are given; binary masks stored as
    `binary_values` = (background, foreground) pixel values (0/255) become 0/1."""
    if path.suffix.lower() == ".mat":
        return read_sbd_label(path)
    with decoding(path, "mask"), Image.open(path) as im:
        im.load()
        mode = im.mode
        if colors is not None and mode not in _WIDE_GRAY:
            # Colour-coded masks: the colours count, whatever the mode they were saved in.
            mode, rgb = "RGB", np.array(im.convert("RGB"))
        elif mode in _ID_MODES:
            # Palette images give their indices here: the class ids, never the colours.
            ids = np.array(im)
        elif mode in _RGB_MODES:
            rgb = np.array(im.convert("RGB"))
        else:
            raise DatasetError(
                f"mask {path} has image mode {mode}; masks must be palette, grayscale or 16-bit PNGs of "
                "class ids (or RGB with dataset.palette for dataset=folder)"
            )
    if mode in _RGB_MODES:
        if colors is None or color_ids is None:
            raise DatasetError(
                f"mask {path} is an RGB image but class-id masks are expected (palette or grayscale PNG "
                "whose pixel values are the class ids); convert it to ids, or for dataset=folder give "
                "dataset.palette to map its colours to ids"
            )
        return colors_to_ids(rgb, colors, color_ids, path)
    if ids.dtype == bool:
        ids = ids.astype(np.uint8)
    if ids.dtype != np.uint8:
        if ids.min(initial=0) < 0 or ids.max(initial=0) > 65535:
            raise DatasetError(f"mask {path} has values outside 0..65535; class ids must be small integers")
        ids = ids.astype(np.uint16) if ids.max(initial=0) > 255 else ids.astype(np.uint8)
    return ids if binary_values is None else binary_to_ids(ids, binary_values, ignore_index, path)


def binary_to_ids(ids: np.ndarray, values: tuple[int, int], ignore_index: int, path: Path) -> np.ndarray:
    """A binary mask stored as (background, foreground) pixel values -> 0/1; other values must be the
    ignore index."""
    background, foreground = values
    out = np.full(ids.shape, ignore_index, dtype=np.uint8)
    out[ids == background] = 0
    out[ids == foreground] = 1
    other = (ids != background) & (ids != foreground) & (ids != ignore_index)
    if other.any():
        found = np.unique(ids[other])[:6].tolist()
        raise DatasetError(
            f"mask {path} has values {found} besides dataset.binary_values {list(values)} and the ignore index "
            f"{ignore_index}; a binary mask holds two values (save it as PNG: JPEG blurs its edges)"
        )
    return out


def class_pixel_counts(mask: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """Pixels per value of an id mask: (max(num_classes, ignore_index + 1, max + 1),) int64 counts."""
    length = max(num_classes, ignore_index + 1)
    if mask.dtype == np.uint8 and mask.size < 1 << 24:
        # OpenCV's histogram is about 3x faster than np.bincount here (exact: float32 counts below 2**24)
        counts = (
            cv2.calcHist([np.ascontiguousarray(mask)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
        )
        return np.pad(counts, (0, max(0, length - 256)))
    return np.bincount(mask.ravel(), minlength=length)


def check_mask_values(counts: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> None:
    """Raise if a mask (given by its class_pixel_counts) holds ids outside [0, num_classes) other than ignore."""
    extra = counts[num_classes:].copy()
    if 0 <= ignore_index - num_classes < len(extra):
        extra[ignore_index - num_classes] = 0
    if extra.any():
        bad = (np.flatnonzero(extra) + num_classes).tolist()
        shown = ", ".join(map(str, bad[:6])) + (", ..." if len(bad) > 6 else "")
        raise DatasetError(
            f"mask {path} has values {{{shown}}} outside 0..{num_classes - 1} that are not the ignore index "
            f"{ignore_index}; fix the mask, or set dataset.num_classes / dataset.ignore_index to match it"
        )
