"""The training loop end to end on the generated dataset: checkpoints, TensorBoard, resume, evaluate, predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deeplab.checkpoint import load_checkpoint
from deeplab.engine import train

ROOT = Path(__file__).resolve().parents[1]


def tiny_overrides(data_dir: Path, **extra: object) -> list[str]:
    """The quickstart shrunk to seconds: R50 v3+ at 48x48 on 12 generated images."""
    base = {
        "experiment": "quickstart",
        "paths.data_dir": str(data_dir),
        "dataset.num_train": 8,
        "dataset.num_val": 4,
        "dataset.image_size": "[40,56]",
        "trainer.max_iters": 4,
        "trainer.batch_size": 2,
        "trainer.crop_size": 40,
        "trainer.eval_interval": 2,
        "trainer.ckpt_interval": 2,
        "trainer.log_interval": 1,
        "trainer.num_workers": 0,
        "trainer.deterministic": True,
        "logger.num_images": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny training run shared by the tests that only read its outputs."""
    from conftest import compose_config

    tmp = tmp_path_factory.mktemp("run")
    run_dir = tmp / "run"
    cfg = compose_config(tiny_overrides(tmp / "data"))
    metrics = train(cfg, run_dir)
    return run_dir, metrics, tmp / "data"


def test_training_writes_checkpoints_metrics_and_tensorboard(trained_run):
    run_dir, metrics, _ = trained_run
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
        assert 0.0 <= saved[key] <= 1.0
        assert saved[key] == pytest.approx(metrics[key])
    assert len(saved["iou_per_class"]) == 4
    assert saved["iteration"] == 4

    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["iteration"] == 4
    assert ckpt["config"]["model"]["name"] == "deeplabv3plus"
    for key in ("model", "optimizer", "scheduler", "scaler", "rng"):
        assert key in ckpt

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {
        "train/loss",
        "train/lr",
        "train/images_per_sec",
        "val/pixel_acc",
        "val/mean_acc",
        "val/mIoU",
        "val/FWIoU",
    }
    assert expected <= scalars
    assert any(tag.startswith("val/IoU/") for tag in scalars)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/mIoU")] == [2, 4]
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]
    assert {"val/example_0", "val/example_1"} <= set(events.Tags()["images"])
    # hyperparameters with the final metrics, for TensorBoard's HPARAMS tab
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert {"hparam/miou", "hparam/pixel_acc", "hparam/mean_acc", "hparam/fwiou"} <= scalars
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["optim.lr"].number_value == pytest.approx(0.01)
    assert hparams["backbone.name"].string_value == "resnet50"


def test_resume_after_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    """Stopped after 2 of 4 iterations and resumed with resume=auto == 4 uninterrupted iterations."""
    from conftest import compose_config

    import deeplab.engine as engine

    data_dir = tmp_path / "data"
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    train(compose_config(tiny_overrides(data_dir, **{"trainer.eval_interval": 4})), full_dir)

    real_save = engine.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if Path(path).name == "last.pt" and state["iteration"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(compose_config(tiny_overrides(data_dir, **{"trainer.eval_interval": 4})), part_dir)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    assert load_checkpoint(part_dir / "checkpoints" / "last.pt")["iteration"] == 2

    train(
        compose_config(tiny_overrides(data_dir, **{"trainer.eval_interval": 4, "trainer.resume": "auto"})),
        part_dir,
    )
    full = load_checkpoint(full_dir / "checkpoints" / "last.pt")
    part = load_checkpoint(part_dir / "checkpoints" / "last.pt")
    assert part["iteration"] == 4
    for key, value in full["model"].items():
        assert torch.equal(value, part["model"][key]), key
    # the loss curve continues where it stopped: steps 1..4 once each
    events = EventAccumulator(str(part_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_resume_with_another_architecture_names_the_keys(trained_run, tmp_path):
    from conftest import compose_config

    from deeplab.errors import CheckpointError

    run_dir, _, data_dir = trained_run
    cfg = compose_config(
        tiny_overrides(
            data_dir, **{"trainer.resume": str(run_dir / "checkpoints" / "last.pt"), "model": "deeplabv3"}
        )
    )
    with pytest.raises(CheckpointError, match="decoder.enabled"):
        train(cfg, tmp_path / "other")


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_evaluate_cli_writes_metrics_json(trained_run, tmp_path):
    run_dir, metrics, data_dir = trained_run
    out = tmp_path / "eval"
    ckpt = run_dir / "checkpoints" / "last.pt"
    proc = run_cli("evaluate.py", f"checkpoint={ckpt}", f"hydra.run.dir={out}", "num_workers=0")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "metrics.json").read_text())
    assert set(result) >= {"pixel_acc", "mean_acc", "miou", "fwiou", "iou_per_class"}
    # same model, same images: the evaluator agrees with the training loop's last validation
    assert result["miou"] == pytest.approx(metrics["miou"], abs=1e-6)
    assert "mIoU" in proc.stdout

    # output stride 8, multi-scale and flip run and give metrics in range
    out8 = tmp_path / "eval8"
    proc = run_cli(
        "evaluate.py", f"checkpoint={ckpt}", f"hydra.run.dir={out8}", "num_workers=0",
        "eval.output_stride=8", "eval.scales=[0.75,1.0]", "eval.flip=true",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result8 = json.loads((out8 / "metrics.json").read_text())
    assert result8["output_stride"] == 8 and 0 <= result8["miou"] <= 1


def test_evaluate_cli_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli("evaluate.py", f"checkpoint={bad}", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode != 0
    assert "broken.pt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_predict_writes_ids_colour_and_overlay(trained_run, tmp_path):
    run_dir, _, data_dir = trained_run
    images = sorted((data_dir / "synthetic").rglob("*.jpg"))[:2]
    assert images
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in images:
        (photos / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "pred"
    proc = run_cli(
        "-m", "deeplab.predict", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", f"input={photos}",
        f"output={out}", f"hydra.run.dir={tmp_path / 'hydra'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    for p in images:
        ids = Image.open(out / f"{p.stem}.png")
        photo = Image.open(p)
        assert ids.mode == "P" and ids.size == photo.size
        assert int(np.asarray(ids).max()) < 4
        assert Image.open(out / f"{p.stem}_color.png").size == photo.size
        assert Image.open(out / f"{p.stem}_overlay.jpg").size == photo.size


def test_multirun_writes_two_runs_and_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        a
        for a in tiny_overrides(tmp_path / "data", **{"trainer.max_iters": 2})
        if not a.startswith("optim.lr")
    ]
    proc = run_cli("train.py", "-m", *args, "optim.lr=0.01,0.02", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.pt").is_file()
        assert (sweep / job / "tensorboard").is_dir()
        assert (sweep / job / "metrics.json").is_file()
    summary = (sweep / "sweep_summary.csv").read_text().splitlines()
    assert summary[0].startswith("run,overrides,miou")
    assert len(summary) == 3
    assert any("optim.lr=0.01" in line for line in summary) and any(
        "optim.lr=0.02" in line for line in summary
    )
    assert (sweep / "sweep_summary.md").is_file()


def test_best_checkpoint_holds_weights_only_and_resume_points_to_last(trained_run, tmp_path):
    from conftest import compose_config

    from deeplab.errors import CheckpointError

    run_dir, _, data_dir = trained_run
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert {"model", "config", "iteration", "metrics"} <= set(best) and "optimizer" not in best
    cfg = compose_config(
        tiny_overrides(data_dir, **{"trainer.resume": str(run_dir / "checkpoints" / "best.pt")})
    )
    with pytest.raises(CheckpointError, match="last.pt"):
        train(cfg, tmp_path / "from_best")


def test_torchrun_two_processes_train_and_agree(tmp_path):
    """`torchrun --nproc_per_node=2 train.py ...` on CPU (gloo): rank 0 writes one run dir, metrics span both shards."""
    run_dir = tmp_path / "ddp"
    args = tiny_overrides(tmp_path / "data", **{"trainer.max_iters": 2, "trainer.batch_size": 4})
    proc = run_cli(
        "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "train.py", *args,
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["iteration"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the all-reduced validation of the two shards equals one process evaluating every image
    from conftest import compose_config

    from deeplab.evaluation import evaluate_checkpoint

    cfg = compose_config([f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}", "num_workers=0"], "evaluate")
    (tmp_path / "eval").mkdir()
    single = evaluate_checkpoint(cfg, tmp_path / "eval")
    assert metrics["pixel_acc"] == pytest.approx(single["pixel_acc"], abs=1e-9)
    assert metrics["miou"] == pytest.approx(single["miou"], abs=1e-9)
