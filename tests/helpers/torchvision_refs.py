"""torchvision's DeepLabV3 models as references: random weights, non-trivial BatchNorm, saved as a .pth."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
from torch import nn
from torchvision.models.segmentation import (
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
)

# our experiment reproducing each torchvision builder, by the name of torchvision's weights file
TORCHVISION_DEEPLABS = {
    "resnet50": (deeplabv3_resnet50, "torchvision_deeplabv3_r50"),
    "resnet101": (deeplabv3_resnet101, "torchvision_deeplabv3_r101"),
    "mobilenet_v3_large": (deeplabv3_mobilenet_v3_large, "torchvision_deeplabv3_mobilenet_v3_large"),
}


def perturb_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine terms, so eval-mode comparisons exercise them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@functools.cache
def torchvision_reference(backbone: str) -> tuple[nn.Module, Path]:
    """torchvision's deeplabv3_<backbone> (seeded random init, perturbed BN, aux head) in eval mode, and its
    state dict on disk; built once per test process."""
    builder, _ = TORCHVISION_DEEPLABS[backbone]
    torch.manual_seed(0)
    model = builder(weights=None, weights_backbone=None, aux_loss=True)
    perturb_batchnorm(model)
    path = Path(tempfile.mkdtemp(prefix="deeplab-test-tv-")) / f"deeplabv3_{backbone}.pth"
    torch.save(model.state_dict(), path)
    return model.eval(), path
