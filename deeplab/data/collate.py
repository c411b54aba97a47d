"""Batching whole images of different sizes for evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# uint8 images are padded with the ImageNet mean colour, which normalises to about 0 like float padding.
UINT8_PAD = (124, 116, 104)


def collate_eval(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
    ignore_index: int = 255,
    pad: Sequence[int] = UINT8_PAD,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to the largest image: images (B, C, Hmax, Wmax), masks (B, Hmax, Wmax) (multi-label: (B, K, Hmax,
    Wmax)) padded with ignore_index,
    sizes (B, 2) int64 (h, w) of each image. Float images pad with 0, uint8 images with `pad`, the mean colour (one value per channel).
    Samples left out (None: unreadable, with dataset.skip_bad) are dropped; B may be 0.

    For a dataset whose ignore index is not 255, pass it: functools.partial(collate_eval, ignore_index=i).
    """
    kept = [item for item in batch if item is not None]
    if not kept:
        return (
            torch.zeros((0, len(pad), 1, 1), dtype=torch.uint8),
            torch.zeros((0, 1, 1), dtype=torch.int64),
            torch.zeros((0, 2), dtype=torch.int64),
        )
    images, masks = zip(*kept)
    sizes = torch.tensor([tuple(m.shape[-2:]) for m in masks], dtype=torch.int64)  # (B, 2)
    height, width = (int(v) for v in sizes.max(dim=0).values)
    first = images[0]
    out_images = first.new_zeros((len(images), first.shape[0], height, width))
    if first.dtype == torch.uint8:
        out_images += torch.tensor(pad, dtype=torch.uint8).view(1, -1, 1, 1)
    out_masks = torch.full(
        (len(masks), *masks[0].shape[:-2], height, width), ignore_index, dtype=masks[0].dtype
    )
    for i, (image, mask) in enumerate(zip(images, masks)):
        h, w = mask.shape[-2:]
        out_images[i, :, :h, :w] = image
        out_masks[i, ..., :h, :w] = mask
    return out_images, out_masks, sizes
