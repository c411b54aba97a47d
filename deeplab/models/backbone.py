"""What every backbone offers the heads (deeplab.models.build_backbone turns a backbone config into one).

A backbone returns {"low": stride-4 features (the v3+ decoder's), "aux": the features the auxiliary head reads,
"out": stride-OS features (ASPP's)}, reports their channels, and can change its output stride in place
(weights untouched), so that a model trained at 16 can be evaluated at 8.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from deeplab.models.batchnorm import statistics_unchanged

OUTPUT_STRIDES = (8, 16)


class Backbone(nn.Module):
    """Base class of the feature extractors: channel counts, output stride, and the three feature maps."""

    low_channels: int
    aux_channels: int
    out_channels: int
    output_stride: int
    activation_checkpointing: bool = False
    """trainer.activation_checkpointing: the deepest stages' units are recomputed in the backward pass."""

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.activation_checkpointing = enabled

    def run_units(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """stage(x); with activation checkpointing (in training), unit by unit keeping only each unit's input,
        the unit recomputed in the backward pass without counting its batch twice in BatchNorm."""
        if not (self.activation_checkpointing and self.training and torch.is_grad_enabled()):
            return stage(x)
        for unit in stage:
            x = checkpoint(
                unit, x, use_reentrant=False,
                context_fn=lambda unit=unit: (contextlib.nullcontext(), statistics_unchanged(unit)),
            )  # fmt: skip
        return x

    def set_output_stride(self, output_stride: int) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError
