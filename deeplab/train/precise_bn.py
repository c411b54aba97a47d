"""BatchNorm statistics re-estimated before validation ("precise BN", Wu & Johnson 2021), and the diagnosis of a
collapse they cause.

BatchNorm normalises a training batch by its own statistics but evaluates with running averages updated by
momentum m at every step: after t steps the running values still hold (1 - m)^t of their initial ones. With
torchvision's MobileNetV3 and timm's TF-ported EfficientNets (m = 0.01, TF's decay 0.99), a run of 60 steps
from random weights keeps 55% of the initial mean 0 and variance 1, so the model evaluates on statistics that
belong to no weights it ever had and predicts one class everywhere. Recomputing the statistics as a plain
average over a few training batches, with the weights as they are, fixes that without touching training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

# Running statistics that still hold more than this share of their initial values are "immature". Not lower:
# the quickstart (momentum 0.1, 40 steps, 1.5% left) validated 2 mIoU points worse with recomputed statistics
# (87.4 against 89.4 in float32 on the Xeon): whole unaugmented images are not the crops it trained on.
IMMATURE_SHARE = 0.05


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers that keep running statistics (frozen ones and those without are left out)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def initial_share(model: nn.Module, steps: int) -> float:
    """The largest share of their initial values that the model's running statistics still hold after `steps`
    updates: (1 - m)^steps for the smallest momentum m (0 for cumulative averages, momentum None)."""
    momenta = [m.momentum for m in batchnorm_layers(model) if m.momentum is not None]
    return (1.0 - min(momenta)) ** steps if momenta else 0.0


def is_immature(model: nn.Module, steps: int) -> bool:
    """Whether some running statistics still hold over IMMATURE_SHARE of their initial values."""
    return initial_share(model, steps) > IMMATURE_SHARE


@torch.no_grad()
def recompute_statistics(
    model: nn.Module, batches: Iterable[Tensor], forward: Callable[[Tensor], object]
) -> int:
    """Replace every BatchNorm's running mean and variance by their plain average over `batches` (uint8 image
    batches, run through `forward` in train mode: the caller's normalisation and autocast). The model's
    momenta and mode are restored afterwards. Returns the number of batches used."""
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: each batch counts 1 / n
    model.train()
    count = 0
    try:
        for images in batches:
            forward(images)
            count += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return count


# Pixel accuracy on training images lower by this much with the running statistics than with each batch's own:
# the statistics, not the weights, are what fails.
MISMATCH = 0.05


@torch.no_grad()
def accuracy_by_statistics(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    predict: Callable[[nn.Module, Tensor], Tensor],
    ignore_index: int,
) -> tuple[float, float]:
    """Pixel accuracy of `model` on training batches (images, masks) with its running statistics (eval mode) and
    with each batch's own (a copy in train mode). predict(model, images) gives (B, H, W) class ids."""
    twin = copy.deepcopy(model)
    accuracy = []
    for net, training in ((model, False), (twin, True)):
        was_training = net.training
        net.train(training)
        right = total = 0
        for images, masks in batches:
            valid = masks != ignore_index
            right += int((predict(net, images)[valid] == masks[valid]).sum())
            total += int(valid.sum())
        net.train(was_training)
        accuracy.append(right / max(total, 1))
    return accuracy[0], accuracy[1]


def mismatch_warning(running: float, batch: float, initial: float) -> str:
    return (
        f"BatchNorm's running statistics lag the weights: on training images the model scores {running:.1%} "
        f"pixel accuracy with them and {batch:.1%} with each batch's own statistics (they still hold "
        f"{initial:.0%} of their initial values: a short run, a low BatchNorm momentum); recompute them before "
        "validating (trainer.precise_bn=16) or train longer"
    )
