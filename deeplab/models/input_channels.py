"""More (or fewer) than 3 input channels: the backbone's first convolution widened, RGB filters kept."""

from __future__ import annotations

import torch
from torch import nn


def first_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute name, conv) of the first Conv2d registered in module: the stem convolution of
    torchvision's ResNets and MobileNets and of timm's encoders."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, name, child
    raise ValueError(f"{type(module).__name__} has no Conv2d")


def input_channels(module: nn.Module) -> int:
    return first_conv(module)[2].in_channels


def widen_input(module: nn.Module, in_channels: int) -> None:
    """Give module's first convolution in_channels inputs in place. From 3: the RGB filters are kept as the
    first three channels and each extra channel gets their mean (pretrained features stay as they were, and
    a new band starts like a grey image); to 1 or 2: every channel gets the mean scaled by 3 / in_channels (a
    grey image gives the RGB filters' response)."""
    parent, name, conv = first_conv(module)
    if conv.in_channels == in_channels:
        return
    if conv.in_channels != 3 or conv.groups != 1:
        raise ValueError(
            f"the first convolution takes {conv.in_channels} channels (groups {conv.groups}), not 3"
        )
    wide = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)  # fmt: skip
    with torch.no_grad():
        rgb = conv.weight  # (out, 3, kh, kw)
        mean = rgb.mean(dim=1, keepdim=True)  # (out, 1, kh, kw)
        if in_channels > 3:
            wide.weight[:, :3] = rgb
            wide.weight[:, 3:] = mean.expand(-1, in_channels - 3, -1, -1)
        else:
            wide.weight[:] = mean.expand(-1, in_channels, -1, -1) * (3.0 / in_channels)
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    wide.train(conv.training)
    setattr(parent, name, wide)
