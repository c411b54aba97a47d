from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deeplab.train.losses import SegmentationLoss


def test_cross_entropy_on_a_hand_example():
    # One image, 1x2 pixels, 2 classes. Pixel 0: logits (0, log 3), class 1 -> -log(3/4).
    # Pixel 1: logits (0, 0), class 0 -> -log(1/2).
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    total, parts = SegmentationLoss(2)({"out": logits}, target)
    want = (-math.log(3 / 4) - math.log(1 / 2)) / 2
    assert total.item() == pytest.approx(want)
    assert F.cross_entropy(logits, target).item() == pytest.approx(want)
    assert set(parts) == {"main"} and not parts["main"].requires_grad


def test_ignored_pixels_are_excluded():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=g)
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, :3] = 255
    loss, _ = SegmentationLoss(5)({"out": logits}, target)
    valid = target != 255
    # Mean over the valid pixels only, computed pixel by pixel.
    per_pixel = -F.log_softmax(logits, 1).gather(1, target.clamp(max=4)[:, None])[:, 0]
    assert loss.item() == pytest.approx(per_pixel[valid].mean().item(), rel=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item(), rel=1e-6)
    # Whatever the logits say at ignored pixels does not matter.
    logits2 = logits.clone()
    logits2[0, :, :3] = 100 * torch.randn(5, 3, 7, generator=g)
    assert SegmentationLoss(5)({"out": logits2}, target)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_batch_loss_is_the_pixel_weighted_mean_not_divided_twice():
    g = torch.Generator().manual_seed(1)
    loss_fn = SegmentationLoss(3)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[0, :6] = 255  # image a has 16 valid pixels, image b has 64
    la = loss_fn({"out": logits[:1]}, target[:1])[0]
    lb = loss_fn({"out": logits[1:]}, target[1:])[0]
    na, nb = int((target[0] != 255).sum()), int((target[1] != 255).sum())
    assert (na, nb) == (16, 64)
    both = loss_fn({"out": logits}, target)[0]
    assert both.item() == pytest.approx(((na * la + nb * lb) / (na + nb)).item(), rel=1e-6)
    assert both.item() != pytest.approx(((la + lb) / 2).item(), rel=1e-3)  # per-image mean differs


def test_single_class_uses_bce_on_valid_pixels():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 5, 5, generator=g)
    target = torch.randint(0, 2, (2, 5, 5), generator=g)
    target[1, 0] = 255
    loss, _ = SegmentationLoss(1)({"out": logits}, target)
    valid = target != 255
    want = F.binary_cross_entropy_with_logits(logits[:, 0][valid], target[valid].float())
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_aux_weight_is_applied():
    g = torch.Generator().manual_seed(3)
    out, aux = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    target = torch.randint(0, 4, (2, 6, 6), generator=g)
    total, parts = SegmentationLoss(4, aux_weight=0.4)({"out": out, "aux": aux}, target)
    assert parts["main"].item() == pytest.approx(F.cross_entropy(out, target).item(), rel=1e-6)
    assert parts["aux"].item() == pytest.approx(F.cross_entropy(aux, target).item(), rel=1e-6)
    assert total.item() == pytest.approx((parts["main"] + 0.4 * parts["aux"]).item(), rel=1e-6)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_all_ignored_batch_gives_zero_loss_and_finite_grads(num_classes):
    logits = torch.randn(2, num_classes, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    total, _ = SegmentationLoss(num_classes)({"out": logits, "aux": logits * 2}, target)
    assert total.item() == 0.0
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="do not match"):
        SegmentationLoss(3)({"out": torch.randn(1, 3, 4, 4)}, torch.zeros(1, 8, 8, dtype=torch.long))
