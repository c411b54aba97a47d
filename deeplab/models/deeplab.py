"""DeepLab: backbone + head (+ auxiliary head), logits at the input's size."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from deeplab.errors import ConfigError
from deeplab.models.backbone import OUTPUT_STRIDES, Backbone
from deeplab.models.heads import DeepLabV3Head, DeepLabV3PlusDecoder


class DeepLab(nn.Module):
    """DeepLabv3 (arXiv 1706.05587) or DeepLabv3+ (arXiv 1802.02611), depending on the head."""

    def __init__(
        self,
        backbone: Backbone,
        head: DeepLabV3Head | DeepLabV3PlusDecoder,
        aux_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone  # the optimiser treats every other parameter as "head"
        self.head = head
        self.aux_head = aux_head
        # The normalisation of its inputs, per channel in [0, 1] units: set by deeplab.load from the model card
        # (plain attributes, not part of the state dict), read by predict().
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        # A multi-label model (dataset.multilabel) scores each class with a sigmoid, present above threshold.
        self.multilabel = False
        self.threshold = 0.5

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Re-dilate the backbone and rescale the ASPP rates in place, keeping the weights (e.g. train 16, eval 8)."""
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"output stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        factor = Fraction(self.output_stride, output_stride)
        rates = [rate * factor for rate in self.head.aspp.rates]
        if any(rate.denominator != 1 for rate in rates):
            raise ConfigError(
                f"ASPP rates {self.head.aspp.rates} at output stride {self.output_stride} have no integer "
                f"equivalent at output stride {output_stride}; choose rates divisible by 2"
            )
        self.backbone.set_output_stride(output_stride)
        self.head.aspp.set_rates([int(rate) for rate in rates])

    @torch.no_grad()
    def predict(
        self,
        image: np.ndarray | Image.Image,
        *,
        probabilities: bool = False,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> np.ndarray:
        """Segment one photo as deeplab.predict does: image (H, W, C) uint8 (a numpy array or a PIL image),
        normalised with self.mean and self.std (the model card's, set by deeplab.load), the whole image at
        once (averaged over `scales` and their mirror images with `flip`). Returns the class ids (H, W) uint8,
        or with probabilities=True the softmax (max(C, 2), H, W) float32; a multi-label model (self.multilabel)
        returns (C, H, W) uint8 1 where a class is present (above self.threshold), or its sigmoids. Runs in eval mode on the model's
        device; the mode is restored."""
        from deeplab.models.inference import predict_probs

        if self.mean is None or self.std is None:
            raise ValueError("predict needs the input normalisation: load the model with deeplab.load, or set "
                             "model.mean and model.std (per channel, in [0, 1] units)")  # fmt: skip
        array = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image)  # a writable copy
        if array.ndim == 2:
            array = array[..., None]
        device = next(self.parameters()).device
        x = (
            torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].to(device).float()
        )  # (1, C, H, W)
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1) * 255
        was_training = self.training
        self.eval()
        try:
            probs = predict_probs(
                self, (x - mean) / std, scales=scales, flip=flip, multilabel=self.multilabel
            )[0]
        finally:
            self.train(was_training)
        if probabilities:
            return probs.float().cpu().numpy()
        labels = probs > self.threshold if self.multilabel else probs.argmax(0)  # (C, H, W) or (H, W)
        return labels.to(torch.uint8).cpu().numpy()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)  # low (B, C_low, H/4, W/4), aux (B, C_aux, ...), out (B, C, H/OS, W/OS)
        logits = self.head(features)
        result = {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}
        if self.training and self.aux_head is not None:
            aux = self.aux_head(features["aux"])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result
