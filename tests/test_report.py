"""The evaluation's explanation: confusion_matrix.csv/.png and per_class.csv/.md next to metrics.json, written by
evaluate.py and by each validation in training (and shown in TensorBoard)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers.configs import compose_config, one_thread, tiny_config
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deeplab import data
from deeplab.config import train_config
from deeplab.deploy.evaluate import evaluate_checkpoint
from deeplab.evaluation.report import confusion_figure, figure_classes, per_class


def read_matrix(path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(path.open()))
    assert rows[0][0] == "truth \\ prediction" and [r[0] for r in rows[1:]] == rows[0][1:]
    return rows[0][1:], np.array([[int(v) for v in r[1:]] for r in rows[1:]], dtype=np.int64)


def iou_of(matrix: np.ndarray) -> list[float | None]:
    diag, union = matrix.diagonal(), matrix.sum(0) + matrix.sum(1) - matrix.diagonal()
    return [float(d / u) if u else None for d, u in zip(diag, union)]


def test_evaluate_writes_a_matrix_that_adds_up_to_metrics_json(trained_run, tmp_path):
    run_dir, _, data_dir = trained_run
    out = tmp_path / "eval"
    out.mkdir()
    cfg = compose_config([f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}", "num_workers=0"], "evaluate")
    with one_thread():
        evaluate_checkpoint(cfg, out)
    names, matrix = read_matrix(out / "confusion_matrix.csv")
    assert names == ["background", "disc", "square", "triangle"]
    # the matrix counts every scored pixel of the validation masks once (the ignore index left out)
    val = data.build_dataset(train_config(tiny_config(data_dir)), "val")
    masks = [val.load_mask(i)[0] for i in range(len(val))]
    assert matrix.sum() == sum(int((m != 255).sum()) for m in masks)
    assert matrix.sum(1).tolist() == [sum(int((m == c).sum()) for m in masks) for c in range(4)]
    # the IoU computed from it is metrics.json's, and per_class.csv's
    metrics = json.loads((out / "metrics.json").read_text())
    assert iou_of(matrix) == pytest.approx(metrics["iou_per_class"], abs=1e-12)
    table = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in table] == names
    for row, iou, true_pixels in zip(table, metrics["iou_per_class"], matrix.sum(1)):
        assert (float(row["iou"]) if row["iou"] else None) == pytest.approx(iou, abs=1e-12)
        assert int(row["true_pixels"]) == true_pixels
    assert sum(float(r["predicted_share"]) for r in table) == pytest.approx(1.0)
    md = (out / "per_class.md").read_text().splitlines()
    assert md[0].startswith("| class | IoU % | recall % | precision %") and len(md) == 2 + len(names)
    assert Image.open(out / "confusion_matrix.png").size[0] > 100


def test_each_validation_in_training_writes_the_report_and_shows_the_matrix(trained_run):
    run_dir, metrics, _ = trained_run
    _, matrix = read_matrix(run_dir / "confusion_matrix.csv")  # the last validation's, as metrics.json
    assert iou_of(matrix) == pytest.approx(metrics["iou_per_class"], abs=1e-12)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("val/confusion_matrix")] == [2, 4]


def test_per_class_rates_and_shares():
    m = np.array([[6, 2, 0], [1, 3, 0], [0, 0, 0]])  # rows = truth; class 2 absent from both
    rows = per_class(m, ["a", "b", "c"])
    assert rows[0]["recall"] == pytest.approx(6 / 8) and rows[0]["precision"] == pytest.approx(6 / 7)
    assert rows[1]["iou"] == pytest.approx(3 / (4 + 5 - 3))
    assert rows[1]["true_share"] == pytest.approx(4 / 12) and rows[1]["predicted_share"] == pytest.approx(
        5 / 12
    )
    assert np.isnan(rows[2]["iou"]) and np.isnan(rows[2]["recall"])


def test_a_150_class_figure_shows_the_most_confused_classes_by_name():
    rng = np.random.default_rng(0)
    m = np.diag(rng.integers(100, 1000, 150))
    confused = [3, 77, 149]
    m[3, 77], m[149, 3] = 500, 400  # the three classes with off-diagonal pixels
    assert set(confused) <= set(figure_classes(m))
    assert figure_classes(m) == sorted(figure_classes(m)) and len(figure_classes(m)) == 30
    assert figure_classes(m[:10, :10]) == list(range(10))
    figure = confusion_figure(m, [f"class_{i}" for i in range(150)])
    assert figure.dtype == np.uint8 and figure.shape[2] == 3
    assert 30 * 28 < figure.shape[0] < 1500  # 30 rows of 28 pixels, not 150
