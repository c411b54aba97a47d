"""Property tests of the metrics: random confusion matrices give values in [0, 1] equal to a float64 NumPy
reference of the formulas in shared/DESIGN.md, and ConfusionMatrix.update counts like a histogram."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deeplab.evaluation.metrics import ConfusionMatrix, metrics_from_matrix


def reference(m: np.ndarray) -> dict:
    """The formulas, written out in float64 NumPy with explicit loops over classes."""
    m = m.astype(np.float64)
    total = m.sum()
    n = m.shape[0]
    rows, cols, diag = m.sum(1), m.sum(0), np.diag(m)
    iou = [diag[c] / (rows[c] + cols[c] - diag[c]) if rows[c] + cols[c] > 0 else math.nan for c in range(n)]
    if total == 0:
        return {"pixel_acc": 0.0, "mean_acc": 0.0, "miou": 0.0, "fwiou": 0.0, "iou_per_class": iou}
    present = [c for c in range(n) if rows[c] > 0]
    seen = [c for c in range(n) if rows[c] + cols[c] > 0]
    return {
        "pixel_acc": diag.sum() / total,
        "mean_acc": float(np.mean([diag[c] / rows[c] for c in present])),
        "miou": float(np.mean([iou[c] for c in seen])),
        "fwiou": sum(rows[c] / total * iou[c] for c in present),
        "iou_per_class": iou,
    }


def matrices() -> st.SearchStrategy[np.ndarray]:
    """Square count matrices of 1..24 classes, often with empty rows and columns (absent classes)."""
    counts = st.one_of(st.just(0), st.integers(0, 50), st.integers(0, 10**9))
    return st.integers(1, 24).flatmap(lambda n: arrays(np.int64, (n, n), elements=counts))


@settings(max_examples=100, deadline=None)
@given(matrix=matrices())
def test_metrics_are_in_range_and_equal_the_float64_reference(matrix):
    got = metrics_from_matrix(torch.from_numpy(matrix))
    want = reference(matrix)
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
        assert 0.0 <= got[key] <= 1.0, key
        assert math.isclose(got[key], want[key], rel_tol=1e-12, abs_tol=1e-15), key
    assert len(got["iou_per_class"]) == matrix.shape[0]
    for g, w in zip(got["iou_per_class"], want["iou_per_class"]):
        assert (math.isnan(g) and math.isnan(w)) or (0.0 <= g <= 1.0 and math.isclose(g, w, rel_tol=1e-12))


@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(1, 12),
    size=st.integers(0, 300),
    batches=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_update_counts_pixels_like_a_histogram(num_classes, size, batches, seed):
    rng = np.random.default_rng(seed)
    cm = ConfusionMatrix(num_classes, ignore_index=255)
    want = np.zeros((num_classes, num_classes), np.int64)
    for _ in range(batches):
        target = rng.choice([*range(num_classes), 255], size=size)
        pred = rng.integers(0, num_classes, size=size)
        cm.update(torch.from_numpy(pred), torch.from_numpy(target))
        keep = target != 255
        np.add.at(want, (target[keep], pred[keep]), 1)
    assert np.array_equal(cm.matrix.numpy(), want)
