"""trainer.precise_bn: BatchNorm statistics recomputed before validation, so that a short run from random weights
scores in eval mode what its weights score with each batch's own statistics; and the collapse warning that
tells a statistics mismatch from a class imbalance."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from helpers.configs import one_thread, tiny_config
from torch import nn

from deeplab.data import build_dataset
from deeplab.deploy.hub import load
from deeplab.evaluation.collapse import STATISTICS_REMEDY, collapse_warning
from deeplab.train import precise_bn
from deeplab.train.engine import train


def test_statistics_are_the_plain_average_over_the_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01), nn.ReLU())
    batches = [torch.randn(2, 3, 6, 6) * (i + 1) + i for i in range(3)]
    with torch.no_grad():
        features = [model[0](b) for b in batches]  # what the BatchNorm sees, (2, 4, 4, 4) each
    model.eval()
    used = precise_bn.recompute_statistics(model, batches, model)
    bn = model[1]
    assert used == 3 and not model.training and bn.momentum == 0.01  # mode and momentum restored
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in features])
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in features])
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, variances.mean(0))


def test_immature_statistics_follow_momentum_and_steps() -> None:
    slow, fast = nn.BatchNorm2d(2, momentum=0.01), nn.BatchNorm2d(2, momentum=0.1)
    assert precise_bn.initial_share(slow, 60) == pytest.approx(0.99**60)  # 0.55: the 60 steps
    assert precise_bn.is_immature(slow, 60) and not precise_bn.is_immature(slow, 1200)
    assert precise_bn.is_immature(fast, 20) and not precise_bn.is_immature(fast, 40)  # the quickstart's 40
    frozen = nn.Sequential(nn.BatchNorm2d(2, track_running_stats=False))
    assert not precise_bn.is_immature(frozen, 1)


def test_the_warnings_name_the_statistics_and_not_the_class_weights() -> None:
    warning = collapse_warning([99, 1, 0], [50, 30, 20], ["road", "car", "sky"], STATISTICS_REMEDY)
    assert warning is not None and "would not help: BatchNorm's running statistics" in warning
    assert "class_weights=auto)" not in warning
    mismatch = precise_bn.mismatch_warning(0.21, 0.95, 0.62)
    assert (
        "21.0% pixel accuracy with them and 95.0%" in mismatch and "62% of their initial values" in mismatch
    )
    assert "trainer.precise_bn=16" in mismatch


def pixel_accuracy(model: nn.Module, data_dir: Path, batch_statistics: bool) -> float:
    """Pixel accuracy on the tiny validation set (4 images of one size, one batch): with the running
    statistics (eval mode), or with the batch's own (train mode, on a copy)."""
    val = build_dataset(tiny_config(data_dir), "val")
    images = torch.stack([val[i][0] for i in range(len(val))]).float() / 255
    masks = torch.stack([val[i][1] for i in range(len(val))]).long()
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    x = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    net = copy.deepcopy(model).train(batch_statistics)
    with torch.no_grad():
        pred = net(x)["out"].argmax(1)
    valid = masks != 255
    return float((pred[valid] == masks[valid]).float().mean())


# MobileNetV3-Large (torchvision's BatchNorm momentum 0.01) from random weights, 48 steps: its running
# statistics still hold 0.99^48 = 62% of their initial values (mean 0, variance 1). The images are normalised
# with a mean far above theirs, so that the first layers' statistics are far from those initial values, as
# real photos make them (on CamVid, eval mode predicted road on 99.96% of the pixels).
MEAN, STD = [0.9, 0.9, 0.9], [0.229, 0.229, 0.229]
SHORT_RUN = {
    "backbone": "mobilenet_v3_large", "backbone.pretrained": "false", "trainer.max_iters": 48,
    "trainer.batch_size": 4, "trainer.eval_interval": 48, "trainer.ckpt_interval": 48, "trainer.log_interval": 16,
    "optim.lr": 0.05, "dataset.num_train": 16, "trainer.amp": "auto", "dataset.mean": str(MEAN).replace(" ", ""),
    "dataset.std": str(STD).replace(" ", ""),
}  # fmt: skip


@pytest.mark.parametrize("setting", ["auto", "0"])
def test_a_short_run_from_random_weights_scores_its_batch_statistics(
    setting: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    cfg = tiny_config(data_dir, **SHORT_RUN, **{"trainer.precise_bn": setting})
    with one_thread(), caplog.at_level(logging.INFO, logger="deeplab.train.engine"):
        metrics = train(cfg, tmp_path / "run")
    model, _ = load(tmp_path / "run")  # best.pt, as evaluate.py and predict read it
    with one_thread():
        running = pixel_accuracy(model, data_dir, batch_statistics=False)
        batch = pixel_accuracy(model, data_dir, batch_statistics=True)
    # best.pt holds the weights validated (training validated in bf16 on a CPU that has it, here float32)
    assert running == pytest.approx(metrics["pixel_acc"], abs=0.005)
    log = caplog.text
    if setting == "auto":  # recomputed: eval mode scores within a few points of the batch statistics
        assert "BatchNorm statistics recomputed on 16 training batches" in log
        assert abs(running - batch) < 0.05, (running, batch)
    else:  # the control: the running statistics lag, the model collapses, and the warning says why
        assert running < batch - 0.3, (running, batch)
        assert "validation: BatchNorm's running statistics lag the weights" in log
