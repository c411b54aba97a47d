"""Multi-label segmentation (dataset.multilabel): masks read in both folder layouts, the augmentation carrying a
known shape in every class channel, the per-class losses and metrics against hand-computed values, and one tiny
run on overlapping shapes that learns the overlap, scored by evaluate.py, drawn by predict and exported."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.configs import compose_config, one_thread
from helpers.multilabel_data import CLASSES, multilabel_overrides, shapes, write_multilabel
from PIL import Image

from deeplab.config import predict_config, train_config
from deeplab.data import build_dataset, load_split
from deeplab.errors import ConfigError, DatasetError
from deeplab.evaluation.multilabel_metrics import MultiLabelMetrics
from deeplab.train.losses import build_criterion
from deeplab.train.multilabel_losses import binary_cross_entropy, dice_loss, focal_loss
from deeplab.visualize import draw_multilabel_map


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory) -> tuple[Path, dict, Path]:
    """One tiny run on the overlapping shapes (300 iterations, about 3 s): (run dir, its metrics, data root)."""
    from deeplab.train.engine import train

    root = write_multilabel(tmp_path_factory.mktemp("multilabel") / "data", {"train": 12, "val": 4})
    cfg = compose_config(multilabel_overrides(root, **{
        "trainer.max_iters": 300, "trainer.eval_interval": 150, "trainer.ckpt_interval": 150,
        "trainer.log_interval": 50, "optim.lr": 0.05,
    }))  # fmt: skip
    run_dir = root.parent / "run"
    with one_thread():
        metrics = train(cfg, run_dir)
    return run_dir, metrics, root


# --- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["dataset=voc", "dataset.multilabel=true"],
            r"dataset=voc has one class per pixel; multi-label masks are read",
        ),
        (["dataset.ignore_index=1"], r"dataset.ignore_index=1: multi-label masks hold 0 \(absent\) and 1"),
        (["dataset.sampler=rare_class"], r"dataset.sampler=rare_class draws images by their single-label"),
        (["loss=lovasz"], r"loss=lovasz compares the classes of a pixel \(softmax\)"),
        (["loss=ohem"], r"loss=ohem compares the classes of a pixel"),
        (["loss.class_weights=[1,2]"], r"loss.class_weights weighs classes against each other"),
        (["loss.pos_weight=[1,2,3]"], r"loss.pos_weight has 3 values but dataset.num_classes is 2"),
        (["dataset.multilabel=false", "loss.pos_weight=[1,2]"], r"loss.pos_weight weighs the present pixels"),
    ],
)
def test_settings_a_multi_label_model_cannot_use_are_one_line(tmp_path, overrides, message) -> None:
    extra = dict(o.split("=", 1) for o in overrides)
    composed = overrides if "dataset" in extra else multilabel_overrides(tmp_path, **extra)
    with pytest.raises(ConfigError, match=message):
        train_config(compose_config(composed))


# --- reading -------------------------------------------------------------------------------------------------


def test_both_layouts_read_the_generated_masks_and_a_missing_class_file_is_absent(tmp_path) -> None:
    per_class = write_multilabel(tmp_path / "per_class", {"train": 2, "val": 3})
    stacked = write_multilabel(tmp_path / "stacked", {"train": 2, "val": 3}, layout="stacked")
    (per_class / "val" / "masks" / "disc" / "val_002.png").unlink()  # no disc on that image
    for root in (per_class, stacked):
        data = build_dataset(compose_config(multilabel_overrides(root)), "val")
        assert data.multilabel and len(data) == 3
        for i in range(3):
            _, truth = shapes(500 + i)
            image, mask = data[i]
            assert image.shape == (3, 40, 48) and mask.shape == (2, 40, 48) and mask.dtype == torch.uint8
            want = truth.transpose(2, 0, 1).copy()
            if root is per_class and i == 2:
                want[1] = 0
            assert np.array_equal(mask.numpy(), want)
    # a TIFF of one page per class reads the same as the .npy
    _, truth = shapes(500)
    tif = stacked / "val" / "masks" / "val_000.tif"
    (stacked / "val" / "masks" / "val_000.npy").unlink()
    pages = [Image.fromarray(truth[..., c]) for c in range(2)]
    pages[0].save(tif, save_all=True, append_images=pages[1:])
    assert np.array_equal(build_dataset(compose_config(multilabel_overrides(stacked)), "val")[0][1].numpy(),
                          truth.transpose(2, 0, 1))  # fmt: skip


def test_mask_mistakes_name_the_file_and_the_fix(tmp_path) -> None:
    root = write_multilabel(tmp_path / "d", {"train": 2, "val": 2})
    cfg = compose_config(multilabel_overrides(root))
    for name in CLASSES:  # stored as 0/200
        path = root / "val" / "masks" / name / "val_000.png"
        Image.fromarray((np.asarray(Image.open(path)) * 200).astype(np.uint8)).save(path)
    with pytest.raises(
        DatasetError, match=r"val_000.png has values \[200\] besides 0 \(absent\), 1 \(present\)"
    ):
        build_dataset(cfg, "val")[0]
    fixed = compose_config(multilabel_overrides(root, **{"dataset.binary_values": "[0,200]"}))
    _, truth = shapes(500)
    assert np.array_equal(
        build_dataset(fixed, "val")[0][1].numpy(), truth.transpose(2, 0, 1)
    )  # mapped to 0/1
    for f in (root / "val" / "masks").glob("*/val_001.png"):
        f.unlink()
    with pytest.raises(DatasetError, match=r"val_001.png has no mask val_001.\* in any class folder"):
        build_dataset(cfg, "val")
    (root / "train" / "masks" / "disc").rename(root / "train" / "masks" / "discs")
    with pytest.raises(DatasetError, match=r"has no folder 'disc' for that class"):
        build_dataset(cfg, "train")


def test_the_augmentation_keeps_every_class_channel_on_its_shape_and_pads_with_ignore(tmp_path) -> None:
    """The photo says where each class is (red: square, green: disc): after random scale, crop, flip and padding
    each channel must still mark those pixels, and padding must be ignored in every channel."""
    root = write_multilabel(tmp_path / "d", {"train": 4, "val": 1})
    cfg = compose_config(multilabel_overrides(root, **{"trainer.crop_size": 64}))  # larger than 40x48: padded
    data = load_split(cfg, "train")
    agree, padded = [], 0
    for seed in range(12):
        image, mask = data[(seed % 4, seed)]
        assert mask.shape == (2, 64, 64)
        pad = mask == 255
        assert torch.equal(pad[0], pad[1])  # the same pixels padded in both channels
        padded += int(pad[0].sum())
        inside = ~pad[0]
        for c in range(2):
            marked = image[c].float() > 90 + 55  # the channel the class raises (noise: sd 12)
            agree.append(float((marked[inside] == (mask[c][inside] == 1)).float().mean()))
    assert padded > 0 and min(agree) > 0.95


# --- losses and metrics --------------------------------------------------------------------------------------


def test_the_losses_against_torch_and_by_hand() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 2, (2, 3, 4, 5))
    target[0, 1, :2] = 255  # ignored pairs
    valid = target != 255
    pos_weight = torch.tensor([1.0, 2.0, 0.5])
    reference = F.binary_cross_entropy_with_logits(
        logits[valid], target[valid].float(), pos_weight=pos_weight.view(1, 3, 1, 1).expand_as(logits)[valid]
    )
    assert torch.allclose(binary_cross_entropy(logits, target, pos_weight=pos_weight), reference)
    moved = logits.clone()
    moved[~valid] += 100.0  # ignored pairs never count
    assert torch.allclose(binary_cross_entropy(moved, target), binary_cross_entropy(logits, target))
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), binary_cross_entropy(logits, target))
    p = torch.sigmoid(logits)
    pt = torch.where(target == 1, p, 1 - p)
    focal = (-((1 - pt) ** 2) * pt.log() * torch.where(target == 1, pos_weight.view(1, 3, 1, 1), 1.0))[
        valid
    ].mean()
    assert torch.allclose(focal_loss(logits, target, pos_weight=pos_weight), focal)
    # Dice by hand over the valid pixels of each class present
    dices = []
    for c in range(3):
        v = valid[:, c]
        g, q = (target[:, c][v] == 1).float(), p[:, c][v]
        dices.append((2 * (q * g).sum() + 1e-6) / (q.sum() + g.sum() + 1e-6))
    assert torch.allclose(dice_loss(logits, target), 1 - torch.stack(dices).mean())
    nothing = torch.full_like(target, 255)
    out = binary_cross_entropy(logits.requires_grad_(), nothing)
    assert out.item() == 0.0 and out.requires_grad


def test_loss_pos_weight_of_the_config_reaches_the_criterion(tmp_path) -> None:
    logits, target = torch.randn(1, 2, 3, 3), torch.randint(0, 2, (1, 2, 3, 3))
    for loss, fn in (("cross_entropy", binary_cross_entropy), ("focal", focal_loss)):
        cfg = train_config(
            compose_config(multilabel_overrides(tmp_path, loss=loss, **{"loss.pos_weight": "[3.0,0.5]"}))
        )
        criterion = build_criterion(cfg.loss, 2, 255, multilabel=True)
        want = fn(logits, target, pos_weight=torch.tensor([3.0, 0.5]))
        assert torch.allclose(criterion.pixel_loss(logits, target), want)
        assert not torch.allclose(want, fn(logits, target))


def test_metrics_by_hand() -> None:
    # class 0: truth 1 1 0 0 (one pair ignored), prediction 1 0 1 0 -> TP 1, FN 1, FP 1, TN 0 (the ignored pair)
    # class 1: truth 0 0 0 0, prediction 0 0 0 0 -> TN 4: no IoU (nothing present or predicted)
    target = torch.tensor([[[[1, 1, 0, 255]], [[0, 0, 0, 0]]]])  # (1, 2, 1, 4)
    pred = torch.tensor([[[[1, 0, 1, 0]], [[0, 0, 0, 0]]]], dtype=torch.bool)
    m = MultiLabelMetrics(2)
    m.update(pred, target)
    assert m.counts.tolist() == [[1, 1, 1, 0], [0, 0, 0, 4]]
    out = m.compute()
    assert out["iou_per_class"][0] == pytest.approx(1 / 3) and np.isnan(out["iou_per_class"][1])
    assert out["precision_per_class"][0] == 0.5 and out["recall_per_class"][0] == 0.5
    assert out["miou"] == pytest.approx(1 / 3) and out["mean_acc"] == 0.5
    assert out["pixel_acc"] == pytest.approx(5 / 7) and out["fwiou"] == pytest.approx(1 / 3)


def test_overlapping_classes_blend_their_colours() -> None:
    masks = np.array([[[1, 1, 0, 255]], [[0, 1, 1, 255]]], dtype=np.uint8)  # (2, 1, 4)
    palette = np.array([[200, 0, 0], [0, 100, 0]], dtype=np.uint8)
    drawn = draw_multilabel_map(masks, palette)
    assert drawn[0].tolist() == [[200, 0, 0], [100, 50, 0], [0, 100, 0], [255, 255, 255]]


# --- one run: training, evaluate.py, predict, export ---------------------------------------------------------


def test_a_multi_label_model_learns_the_overlap(multilabel_run) -> None:
    """On photos it never saw, the pixels of both the square and the disc are predicted as both: a softmax model
    gives every pixel one class, so its overlap IoU is 0."""
    import deeplab

    run_dir, metrics, _ = multilabel_run
    model, card = deeplab.load(run_dir / "checkpoints" / "best.pt")
    assert (
        card.labels.multilabel and card.labels.class_names == list(CLASSES) and card.labels.threshold == 0.5
    )
    inter = union = 0
    for i in range(8):
        photo, truth = shapes(9000 + i)
        pred = model.predict(photo)  # (2, H, W) of 0 / 1
        assert pred.shape == (2, 40, 48)
        both_true, both_pred = truth.all(2), pred.astype(bool).all(0)
        inter, union = inter + (both_true & both_pred).sum(), union + (both_true | both_pred).sum()
    assert inter / union > 0.5, f"overlap IoU {inter / union:.2f}"
    assert min(metrics["iou_per_class"]) > 0.6 and metrics["miou"] > 0.7
    rows = list(csv.DictReader((run_dir / "confusion_matrix.csv").open()))
    assert [r["class"] for r in rows] == list(CLASSES) and set(rows[0]) >= {"true_positive", "false_negative"}
    assert "recall" in (run_dir / "per_class.md").read_text()
    assert not (run_dir / "confusion_matrix.png").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"val/precision/disc", "val/recall/square", "val/IoU/disc"} <= set(tags["scalars"])
    assert "val/example_0" in tags["images"] and "val/confusion_matrix" not in tags["images"]


def test_evaluate_py_scores_the_checkpoint_as_training_did_and_the_threshold_acts(
    multilabel_run, tmp_path
) -> None:
    from deeplab.deploy.evaluate import evaluate_checkpoint

    run_dir, metrics, _ = multilabel_run
    checkpoint = run_dir / "checkpoints" / "best.pt"
    scored = evaluate_checkpoint(
        compose_config([f"checkpoint={checkpoint}", "num_workers=0"], "evaluate"), tmp_path
    )
    assert scored["miou"] == pytest.approx(metrics["miou"])
    assert scored["confusion_counts"] and json.loads((tmp_path / "metrics.json").read_text())["f1_per_class"]
    # evaluate.py dataset.threshold=...: a lower threshold predicts more pixels, so recall rises
    lower = evaluate_checkpoint(
        compose_config([f"checkpoint={checkpoint}", "num_workers=0", "dataset.threshold=0.05"], "evaluate"),
        tmp_path / "low",
    )
    assert np.mean(lower["recall_per_class"]) > np.mean(scored["recall_per_class"])


def test_predict_writes_a_mask_per_class_that_trains_again(multilabel_run, tmp_path) -> None:
    from deeplab.deploy.predict import predict

    run_dir, _, root = multilabel_run
    out = tmp_path / "pred"
    cfg = compose_config([f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", f"input={root / 'val' / 'images'}",
                          f"output={out}"], "predict")  # fmt: skip
    with one_thread():
        written = predict(cfg, out)
    assert len(written) == 4
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*CLASSES, *(f"val_{i:03d}{s}" for i in range(4) for s in ("_color.png", "_overlay.jpg"))]
    )
    mask = Image.open(out / "disc" / "val_000.png")
    assert mask.mode == "1"
    _, truth = shapes(500)
    assert (np.asarray(mask) == truth[..., 1].astype(bool)).mean() > 0.9
    # the predictions are the training layout: a folder per class, ready to correct and train on
    again = compose_config(multilabel_overrides(root, **{"dataset.val.masks": out}))
    assert np.array_equal(build_dataset(again, "val")[0][1][1].numpy(), np.asarray(mask).astype(np.uint8))
    with pytest.raises(
        ConfigError, match=r"autolabel=true writes one class per pixel, but this model is multi-label"
    ):
        predict(compose_config([f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}",
                                f"input={root / 'val' / 'images'}", f"output={tmp_path / 'x'}", "autolabel=true"],
                               "predict"), tmp_path / "x")  # fmt: skip
    from deeplab.config import serve_config
    from deeplab.deploy.serve import build_server

    with pytest.raises(
        ConfigError, match=r"deeplab.serve \(class-id PNGs and class shares\) writes one class"
    ):
        build_server(
            serve_config(compose_config([f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}"], "serve"))
        )


def test_the_onnx_export_carries_multilabel_and_predicts_the_same_masks(multilabel_run, tmp_path) -> None:
    from deeplab.deploy.export import export
    from deeplab.deploy.segmenter import load_segmenter

    run_dir, _, root = multilabel_run
    checkpoint = run_dir / "checkpoints" / "best.pt"
    onnx = tmp_path / "model.onnx"
    with one_thread():
        export(compose_config([f"checkpoint={checkpoint}", f"output={onnx}", "trace_size=[40,48]"], "export"),
               tmp_path)  # fmt: skip
    segs = [load_segmenter(compose_config([f"checkpoint={p}", "input=x", "output=y", "amp=off"], "predict"))
            for p in (checkpoint, onnx)]  # fmt: skip
    assert all(s.multilabel for s in segs) and segs[1].labels == list(CLASSES)
    ev = predict_config(compose_config([f"checkpoint={checkpoint}", "input=x", "output=y"], "predict")).eval
    for i in range(3):
        photo, _ = shapes(700 + i)
        a, b = (s(photo, ev) for s in segs)
        assert a.shape == (2, 40, 48) and (a != b).mean() < 0.001


def test_the_data_check_counts_present_pixels_and_names_a_bad_mask(tmp_path, capsys) -> None:
    from deeplab.data.check import main as check_main

    root = write_multilabel(tmp_path / "d", {"train": 3, "val": 2})
    assert check_main(multilabel_overrides(root)) == 0
    out = capsys.readouterr().out
    assert "square" in out and "disc" in out and "auto weight" not in out
    bad = root / "val" / "masks" / "square" / "val_001.png"
    Image.fromarray(np.full((40, 48), 7, np.uint8)).save(bad)
    assert check_main(multilabel_overrides(root)) == 1
    assert f"problem: mask {bad} has values [7] besides 0 (absent), 1 (present)" in capsys.readouterr().out


def test_pos_weight_auto_is_the_root_of_absent_over_present_pixels_of_the_training_masks(tmp_path) -> None:
    from deeplab.train.engine import train

    root = write_multilabel(tmp_path / "d", {"train": 4, "val": 2})
    (root / "train" / "masks" / "disc" / "train_003.png").unlink()  # absent there: counted as absent pixels
    truth = np.stack([shapes(i)[1] for i in range(4)])  # (4, H, W, 2)
    truth[3, ..., 1] = 0
    present, absent = (truth == 1).sum((0, 1, 2)), (truth == 0).sum((0, 1, 2))
    run_dir = tmp_path / "run"
    overrides = {"loss.pos_weight": "auto", "trainer.max_iters": 2, "logger": "[]"}
    with one_thread():
        train(compose_config(multilabel_overrides(root, **overrides)), run_dir)
    saved = json.loads((run_dir / "pos_weight.json").read_text())
    assert saved["classes"] == list(CLASSES) and saved["present"] == present.tolist()
    assert saved["weights"] == pytest.approx(np.sqrt(absent / present).tolist())
