"""deeplab.train.losses: each loss against values computed by hand (plain Python on tiny inputs), its gradient
(gradcheck in float64), the one-logit case, and median-frequency class weights."""

from __future__ import annotations

import math

import pytest
import torch

from deeplab.data.stats import median_frequency_weights
from deeplab.train.losses import (
    SegmentationLoss,
    cross_entropy,
    dice_loss,
    focal_loss,
    lovasz_softmax,
    ohem_cross_entropy,
)

# Four pixels of one 1x4 image, three classes; the last pixel is ignored.
LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 3.0]]
TARGET = [0, 2, 2, 255]


def tensors(dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor(LOGITS, dtype=dtype).T.reshape(1, 3, 1, 4)  # (B, C, H, W)
    return logits, torch.tensor(TARGET).reshape(1, 1, 4)


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def p_true() -> list[float]:
    """The true-class probability of each valid pixel."""
    return [softmax(LOGITS[i])[TARGET[i]] for i in range(3)]


def test_cross_entropy_with_and_without_class_weights() -> None:
    logits, target = tensors()
    nll = [-math.log(p) for p in p_true()]
    assert cross_entropy(logits, target).item() == pytest.approx(sum(nll) / 3, rel=1e-6)
    w = [0.5, 3.0, 2.0]
    expected = (w[0] * nll[0] + w[2] * nll[1] + w[2] * nll[2]) / (w[0] + w[2] + w[2])
    assert cross_entropy(logits, target, weight=torch.tensor(w)).item() == pytest.approx(expected, rel=1e-6)


def test_ohem_keeps_the_easy_pixels_out_unless_min_kept_needs_them() -> None:
    logits, target = tensors()
    p = p_true()  # about 0.84 (easy), 0.14, 0.91 (easy)
    assert p[0] > 0.7 and p[1] < 0.7 and p[2] > 0.7
    nll = [-math.log(v) for v in p]
    assert ohem_cross_entropy(logits, target, thresh=0.7, min_kept=0).item() == pytest.approx(
        nll[1], rel=1e-6
    )
    # min_kept 2: the two hardest valid pixels (lowest p_t): pixels 1 and 0
    two = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=2).item()
    assert two == pytest.approx((nll[1] + nll[0]) / 2, rel=1e-6)
    # thresh 1 keeps every valid pixel: plain cross-entropy
    assert ohem_cross_entropy(logits, target, thresh=1.0, min_kept=0).item() == pytest.approx(
        sum(nll) / 3, rel=1e-6
    )


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
def test_focal_loss(gamma: float) -> None:
    logits, target = tensors()
    expected = sum(-((1 - p) ** gamma) * math.log(p) for p in p_true()) / 3
    assert focal_loss(logits, target, gamma=gamma).item() == pytest.approx(expected, rel=1e-6)


def test_dice_loss_over_the_classes_present() -> None:
    logits, target = tensors()
    probs = [softmax(LOGITS[i]) for i in range(3)]  # the valid pixels
    dice = []
    for c in (0, 2):  # class 1 is absent from the target: left out of the mean
        truth = [1.0 if TARGET[i] == c else 0.0 for i in range(3)]
        inter = sum(probs[i][c] * truth[i] for i in range(3))
        dice.append((2 * inter + 1e-6) / (sum(probs[i][c] for i in range(3)) + sum(truth) + 1e-6))
    expected = 1 - sum(dice) / 2
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def jaccard_loss_of(errors_set: set[int], fg: set[int]) -> float:
    """Berman et al.'s set function: |M| / |fg ∪ M| for the pixels M taken as mispredicted."""
    return len(errors_set) / len(fg | errors_set) if fg | errors_set else 0.0


def test_lovasz_softmax_is_the_lovasz_extension_of_the_jaccard_loss() -> None:
    """The extension computed from its definition: errors sorted in decreasing order, each weighted by the
    increase of the Jaccard set function when its pixel joins the set."""
    logits, target = tensors()
    probs = [softmax(LOGITS[i]) for i in range(3)]
    per_class = []
    for c in (0, 2):
        fg = {i for i in range(3) if TARGET[i] == c}
        errors = [abs((1.0 if i in fg else 0.0) - probs[i][c]) for i in range(3)]
        order = sorted(range(3), key=lambda i: -errors[i])
        total, taken = 0.0, set()
        for i in order:
            before = jaccard_loss_of(taken, fg)
            taken.add(i)
            total += errors[i] * (jaccard_loss_of(taken, fg) - before)
        per_class.append(total)
    assert lovasz_softmax(logits, target).item() == pytest.approx(sum(per_class) / 2, rel=1e-6)
    # A perfect prediction has no loss.
    perfect = torch.full((1, 3, 1, 4), -30.0)
    for i, c in enumerate(TARGET[:3]):
        perfect[0, c, 0, i] = 30.0
    assert lovasz_softmax(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


LOSSES = {
    "cross_entropy": lambda x, y: cross_entropy(x, y, weight=torch.tensor([0.5, 3.0, 2.0], dtype=x.dtype)),
    "ohem": lambda x, y: ohem_cross_entropy(x, y, thresh=0.7, min_kept=2),
    "focal": lambda x, y: focal_loss(x, y, gamma=2.0),
    "dice": dice_loss,
    "lovasz": lovasz_softmax,
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients(name: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 3, 4))
    target[0, 0, :2] = 255
    loss_fn = LOSSES[name]
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, target), (logits,), eps=1e-6, atol=1e-4)
    loss = loss_fn(logits.detach().float().requires_grad_(), target)
    assert torch.isfinite(loss)
    # no valid pixel: 0 with a graph, not NaN
    empty = loss_fn(logits.detach().float().requires_grad_(), torch.full((2, 3, 4), 255))
    assert empty.item() == 0.0 and empty.requires_grad


@pytest.mark.parametrize("name", list(LOSSES))
def test_one_logit_models_are_scored_as_the_two_logits_0_and_z(name: str) -> None:
    torch.manual_seed(1)
    z = torch.randn(2, 1, 3, 4)
    target = torch.randint(0, 2, (2, 3, 4))
    target[1, 2, 3] = 255
    fn = LOSSES[name] if name != "cross_entropy" else cross_entropy
    binary = SegmentationLoss(1, pixel_loss=lambda x, y: fn(x, y))({"out": z}, target)[0]
    two = fn(torch.cat([torch.zeros_like(z), z], dim=1), target)
    assert binary.item() == pytest.approx(two.item(), rel=1e-6)
    if name == "cross_entropy":  # exactly BCE
        valid = target != 255
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0][valid], target[valid].float())
        assert SegmentationLoss(1)({"out": z}, target)[0].item() == pytest.approx(bce.item(), rel=1e-6)


def test_median_frequency_weights() -> None:
    # shares 100/160, 10/160, 0, 50/160; the median of the present ones is 50/160
    assert median_frequency_weights([100, 10, 0, 50]) == pytest.approx([0.5, 5.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        median_frequency_weights([0, 0])
