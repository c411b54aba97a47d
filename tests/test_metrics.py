from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers.ddp import join_group, spawn
from hypothesis import given, settings
from hypothesis import strategies as st

from deeplab.evaluation.metrics import ConfusionMatrix, format_table, json_safe, metrics_from_matrix

# Rows = truth. Class 2 is absent from truth and prediction; class 3 is only predicted (once, for a 0).
HAND = torch.tensor(
    [
        [5, 1, 0, 1],
        [2, 3, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)


def pairs_for(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label vectors (pred, target) whose confusion matrix is `matrix`."""
    pred, target = [], []
    for t in range(matrix.shape[0]):
        for p in range(matrix.shape[1]):
            target += [t] * int(matrix[t, p])
            pred += [p] * int(matrix[t, p])
    return torch.tensor(pred), torch.tensor(target)


def reference(m: np.ndarray) -> dict:
    """Straightforward float64 loops over the formulas in DESIGN.md."""
    m = m.astype(np.float64)
    n = m.shape[0]
    total = m.sum()
    rows, cols = m.sum(1), m.sum(0)
    accs = [m[c, c] / rows[c] for c in range(n) if rows[c] > 0]
    ious = []
    for c in range(n):
        union = rows[c] + cols[c] - m[c, c]
        ious.append(m[c, c] / union if union > 0 else math.nan)
    present = [i for i in ious if not math.isnan(i)]
    return {
        "pixel_acc": np.trace(m) / total,
        "mean_acc": sum(accs) / len(accs),
        "miou": sum(present) / len(present),
        "fwiou": sum(rows[c] / total * ious[c] for c in range(n) if rows[c] > 0),
        "iou_per_class": ious,
    }


def assert_metrics_equal(got: dict, want: dict, tol: float = 1e-12) -> None:
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
        assert got[key] == pytest.approx(want[key], abs=tol), key
    assert len(got["iou_per_class"]) == len(want["iou_per_class"])
    for g, w in zip(got["iou_per_class"], want["iou_per_class"]):
        assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w, abs=tol)


def test_hand_computed_matrix():
    got = metrics_from_matrix(HAND)
    assert got["pixel_acc"] == pytest.approx(8 / 12)
    assert got["mean_acc"] == pytest.approx((5 / 7 + 3 / 5) / 2)  # class 2 and 3 absent from truth
    iou = got["iou_per_class"]
    assert iou[0] == pytest.approx(5 / 9)
    assert iou[1] == pytest.approx(3 / 6)
    assert math.isnan(iou[2])  # absent from both: no IoU, excluded from the mean
    assert iou[3] == 0.0  # predicted only: a real error, counts as 0
    assert got["miou"] == pytest.approx((5 / 9 + 1 / 2 + 0) / 3)
    assert got["fwiou"] == pytest.approx(7 / 12 * 5 / 9 + 5 / 12 * 1 / 2)
    assert all(isinstance(got[k], float) for k in ("pixel_acc", "mean_acc", "miou", "fwiou"))


def test_perfect_and_empty():
    perfect = metrics_from_matrix(torch.diag(torch.tensor([3, 0, 4])))
    assert perfect["pixel_acc"] == perfect["mean_acc"] == perfect["miou"] == perfect["fwiou"] == 1.0
    assert math.isnan(perfect["iou_per_class"][1])
    empty = ConfusionMatrix(3).compute()
    assert [empty[k] for k in ("pixel_acc", "mean_acc", "miou", "fwiou")] == [0.0] * 4
    assert all(math.isnan(v) for v in empty["iou_per_class"])


def test_update_builds_the_matrix_and_skips_ignored_pixels():
    pred, target = pairs_for(HAND)
    # Ignored pixels with every possible prediction, including an out-of-range one.
    pred = torch.cat([pred, torch.tensor([0, 1, 2, 3, 200])])
    target = torch.cat([target, torch.full((5,), 255)])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    assert cm.matrix.dtype == torch.int64
    assert torch.equal(cm.matrix, HAND)


def test_ignore_index_can_be_a_class_id():
    cm = ConfusionMatrix(4, ignore_index=3)
    cm.update(torch.tensor([0, 1, 3, 2]), torch.tensor([0, 3, 3, 2]))
    assert cm.matrix.sum() == 2 and cm.matrix[0, 0] == 1 and cm.matrix[2, 2] == 1


def test_out_of_range_labels_never_land_in_other_cells():
    cm = ConfusionMatrix(3)
    # target 3 and -1 are not valid classes; pred 7 is not a valid prediction.
    cm.update(torch.tensor([0, 1, 1, 7, 2]), torch.tensor([3, -1, 1, 0, 2]))
    assert torch.equal(cm.matrix, torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 1]]))


def test_batches_and_order_do_not_matter():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 9, 11), generator=g)
    target[target == 4] = 255
    pred = torch.randint(0, 4, (6, 9, 11), generator=g, dtype=torch.uint8)  # uint8, as masks often are
    whole = ConfusionMatrix(4)
    whole.update(pred, target)
    one_by_one = ConfusionMatrix(4)
    for i in reversed(range(6)):
        one_by_one.update(pred[i], target[i])
    assert torch.equal(whole.matrix, one_by_one.matrix)
    assert int(whole.matrix.sum()) == int((target != 255).sum())

    whole.reset()
    assert int(whole.matrix.sum()) == 0


def test_update_needs_no_host_sync():
    # Meta tensors have no data: any .item(), .cpu() or data-dependent shape in update() would raise.
    cm = ConfusionMatrix(21, device="meta")
    cm.update(
        torch.empty(2, 5, 5, dtype=torch.int64, device="meta"), torch.empty(2, 5, 5, device="meta").long()
    )
    assert cm.matrix.device.type == "meta"


def test_update_rejects_mismatched_or_float_inputs():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shapes differ"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda n: st.lists(
            st.lists(st.integers(0, 1000) | st.just(0), min_size=n, max_size=n), min_size=n, max_size=n
        )
    )
)
def test_random_matrices_match_float64_reference(rows):
    m = np.array(rows, dtype=np.int64)
    got = metrics_from_matrix(torch.from_numpy(m))
    if m.sum() == 0:
        assert got["miou"] == 0.0
        return
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
        assert 0.0 <= got[key] <= 1.0
    assert_metrics_equal(got, reference(m), tol=1e-12)


def test_json_safe_and_table():
    got = metrics_from_matrix(HAND)
    text = json.dumps(json_safe(got), allow_nan=False)  # raises on NaN
    assert json.loads(text)["iou_per_class"][2] is None
    table = format_table(got, ["background", "cat", "dog", "bird"])
    assert "55.56" in table  # IoU of class 0 = 5/9
    assert "mIoU" in table and f"{100 * 19 / 54:.2f}" in table
    dog_line = next(line for line in table.splitlines() if line.startswith("dog"))
    assert dog_line.split()[-1] == "-"
    with pytest.raises(ValueError):
        format_table(got, ["a", "b"])


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    join_group(rank, world, init_file)
    try:
        g = torch.Generator().manual_seed(rank)
        cm = ConfusionMatrix(3)
        cm.update(torch.randint(0, 3, (2, 7, 7), generator=g), torch.randint(0, 3, (2, 7, 7), generator=g))
        local = cm.matrix.clone()
        cm.all_reduce()
        torch.save({"local": local, "reduced": cm.matrix}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # the same sums are checked end to end by test_two_process_ddp_evaluation_equals_one_process
def test_all_reduce_sums_over_two_gloo_processes(tmp_path):
    spawn(_ddp_worker, tmp_path, str(tmp_path))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    total = r0["local"] + r1["local"]
    assert not torch.equal(r0["local"], r1["local"])
    assert torch.equal(r0["reduced"], total) and torch.equal(r1["reduced"], total)

    # Same counts as one process that sees both ranks' data.
    single = ConfusionMatrix(3)
    for rank in range(2):
        g = torch.Generator().manual_seed(rank)
        single.update(
            torch.randint(0, 3, (2, 7, 7), generator=g), torch.randint(0, 3, (2, 7, 7), generator=g)
        )
    assert torch.equal(single.matrix, total)


def test_all_reduce_without_process_group_is_a_no_op():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)
