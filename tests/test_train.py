"""The training loop end to end on the generated dataset: checkpoints, TensorBoard, resume, evaluate, predict."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import compose_config, one_thread, tiny_config, tiny_overrides
from helpers.interrupt import interrupted_at
from helpers.processes import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deeplab.artifacts.checkpoint import load_checkpoint
from deeplab.deploy.evaluate import evaluate_checkpoint
from deeplab.errors import CheckpointError
from deeplab.train.engine import train


def test_training_writes_checkpoints_metrics_and_tensorboard(trained_run):
    run_dir, metrics, _ = trained_run
    ckpt_dir = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        ".lock",
        "best.pt",
        "last.pt",
        "validated.json",
    ]  # .lock: the run dir lock; validated.json: the last validation logged in full
    assert max(p.stat().st_size for p in ckpt_dir.iterdir()) < 2 * 2**20  # the tiny model: a few hundred KB
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):
        assert 0.0 <= saved[key] <= 1.0
        assert saved[key] == pytest.approx(metrics[key])
    assert len(saved["iou_per_class"]) == 4
    assert saved["iteration"] == 4

    ckpt = load_checkpoint(ckpt_dir / "last.pt")
    assert ckpt["iteration"] == 4
    assert ckpt["config"]["model"]["name"] == "deeplabv3plus"
    assert ckpt["config"]["trainer"]["max_iters"] == 4  # the validated config, every key
    for key in ("model", "optimizer", "scheduler", "scaler", "rng"):
        assert key in ckpt

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/lr", "train/images_per_sec", "val/pixel_acc", "val/mean_acc", "val/mIoU"}
    assert expected | {"val/FWIoU"} <= scalars
    assert any(tag.startswith("val/IoU/") for tag in scalars)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/mIoU")] == [2, 4]
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]
    assert lrs[0] == pytest.approx(0.01)  # the first step runs at the base lr
    assert {"val/example_0", "val/example_1"} <= set(events.Tags()["images"])
    # hyperparameters with the final metrics, for TensorBoard's HPARAMS tab
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert {"hparam/miou", "hparam/pixel_acc", "hparam/mean_acc", "hparam/fwiou"} <= scalars
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["optim.lr"].number_value == pytest.approx(0.01)
    assert hparams["backbone.name"].string_value == "resnet_tiny"


@pytest.mark.parametrize("sampler", ["random", "rare_class"])
def test_resume_after_interruption_gives_the_same_weights(sampler, tiny_data, tmp_path, monkeypatch):
    """Stopped after 2 of 4 iterations and resumed with resume=auto == 4 uninterrupted iterations (also with
    the rare-class sampler)."""
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    options = {"trainer.eval_interval": 4, "dataset.sampler": sampler}
    train(tiny_config(tiny_data, **options), full_dir)
    with interrupted_at(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_data, **options), part_dir)
    assert load_checkpoint(part_dir / "checkpoints" / "last.pt")["iteration"] == 2

    train(tiny_config(tiny_data, **options, **{"trainer.resume": "auto"}), part_dir)
    full = load_checkpoint(full_dir / "checkpoints" / "last.pt")
    part = load_checkpoint(part_dir / "checkpoints" / "last.pt")
    assert part["iteration"] == 4
    for key, value in full["model"].items():
        assert torch.equal(value, part["model"][key]), key
    # the loss curve continues where it stopped: steps 1..4 once each (sorted: two event files written in
    # the same second are read in the order of a counter compared as text, "10" before "9")
    events = EventAccumulator(str(part_dir / "tensorboard"))
    events.Reload()
    assert sorted(e.step for e in events.Scalars("train/loss")) == [1, 2, 3, 4]


def test_resume_with_another_architecture_names_the_keys(trained_run, tmp_path):
    run_dir, _, data_dir = trained_run
    cfg = tiny_config(
        data_dir, **{"trainer.resume": run_dir / "checkpoints" / "last.pt", "model": "deeplabv3"}
    )
    with pytest.raises(CheckpointError, match="model.decoder.enabled: checkpoint True, config False"):
        train(cfg, tmp_path / "other")


def test_best_checkpoint_holds_weights_only_and_resume_points_to_last(trained_run, tmp_path):
    run_dir, _, data_dir = trained_run
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert {"model", "config", "iteration", "metrics"} <= set(best) and "optimizer" not in best
    cfg = tiny_config(data_dir, **{"trainer.resume": run_dir / "checkpoints" / "best.pt"})
    with pytest.raises(CheckpointError, match="last.pt"):
        train(cfg, tmp_path / "from_best")


def evaluate_in_process(checkpoint: Path, out: Path, *overrides: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_config([f"checkpoint={checkpoint}", "num_workers=0", *overrides], "evaluate")
    with one_thread():
        return evaluate_checkpoint(cfg, out)


def test_evaluate_agrees_with_training_and_takes_eval_options(trained_run, tmp_path):
    run_dir, metrics, _ = trained_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    result = evaluate_in_process(ckpt, tmp_path / "eval")
    # same model, same images: the evaluator agrees with the training loop's last validation
    assert result["miou"] == pytest.approx(metrics["miou"], abs=1e-6)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["output_stride"] == 16 and saved["num_images"] == 4 and saved["checkpoint"] == str(ckpt)
    # output stride 8, multi-scale and flip run and are recorded
    evaluate_in_process(
        ckpt, tmp_path / "eval8", "eval.output_stride=8", "eval.scales=[0.75,1.0]", "eval.flip=true"
    )
    saved8 = json.loads((tmp_path / "eval8" / "metrics.json").read_text())
    assert saved8["output_stride"] == 8 and saved8["scales"] == [0.75, 1.0] and saved8["flip"] is True
    assert 0 <= saved8["miou"] <= 1


def test_evaluate_py_smoke(trained_run, tmp_path):
    """evaluate.py as a user runs it: metrics printed and written; a broken file is one line, exit 2."""
    run_dir, metrics, _ = trained_run
    out = tmp_path / "eval"
    proc = run_cli("evaluate.py", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert "mIoU" in proc.stdout and json.loads((out / "metrics.json").read_text())["miou"] >= 0


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
        overlay = Image.open(out / f"{p.stem}_overlay.jpg")  # a legend too large for the photo goes beside it
        assert overlay.height == photo.height and overlay.width >= photo.width


def test_multirun_records_each_job_and_a_failed_one_does_not_end_the_sweep(tiny_data, tmp_path):
    """train.py -m: each job its own dir, checkpoints and TensorBoard run; a job whose config is wrong fails
    alone (recorded with its error) and the sweep goes on; the summary lists every job."""
    sweep = tmp_path / "sweep"
    args = tiny_overrides(tiny_data, **{"trainer.max_iters": 2})
    proc = run_cli("train.py", "-m", *args, "optim.lr=0.01,-1,0.02", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "2"):
        assert (sweep / job / "checkpoints" / "last.pt").is_file()
        assert (sweep / job / "tensorboard").is_dir()
        assert json.loads((sweep / job / "status.json").read_text())["status"] == "finished"
    failed = json.loads((sweep / "1" / "status.json").read_text())
    assert failed == {"status": "failed", "error": "optim.lr: input should be greater than 0, got -1"}
    assert "error: optim.lr: input should be greater than 0, got -1" in proc.stderr
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 3 and rows[-1]["run"] == "1"  # best first; a failed job has no mIoU and comes last
    by_job = {r["run"]: r for r in rows}
    assert (
        by_job["1"]["status"] == "failed" and by_job["1"]["miou"] == "" and "optim.lr" in by_job["1"]["error"]
    )
    assert by_job["0"]["status"] == by_job["2"]["status"] == "finished" and float(by_job["0"]["miou"]) >= 0
    summary = (sweep / "sweep_summary.md").read_text()
    assert "| failed |" in summary
    # The CSV in metrics.json's units (fractions), the Markdown table in percent, as its header says.
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert float(by_job["0"]["miou"]) == pytest.approx(metrics["miou"])
    assert "| mIoU % |" in summary and f"| {100 * metrics['miou']:.2f} |" in summary
    # Validation inside training shows its progress; the final table names the iteration and checkpoint.
    assert re.search(r"eval: +\d+%", proc.stderr)
    assert f"validation at iteration 2 of 2: {sweep / '0' / 'checkpoints' / 'last.pt'}" in proc.stdout


@pytest.mark.parametrize(
    "sampler", ["random", pytest.param("rare_class", marks=pytest.mark.slow)]
)  # rare_class: each rank scans the masks' classes (one label-count cache) and draws its own stream
def test_torchrun_two_processes_train_and_agree(tiny_data, tmp_path, sampler):
    """`torchrun --nproc_per_node=2 train.py ...` on CPU (gloo): rank 0 writes one run dir, metrics span both shards."""
    run_dir = tmp_path / "ddp"
    args = tiny_overrides(
        tiny_data,
        **{"trainer.max_iters": 2, "trainer.batch_size": 4, "dataset.sampler": sampler,
           "paths.cache_dir": tmp_path / "cache", "trainer.precise_bn": "auto"},
    )  # fmt: skip
    port = 29533 if sampler == "random" else 29534
    proc = run_cli(
        "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "train.py", *args,
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # both ranks recomputed the BatchNorm statistics (immature after 2 steps); last.pt holds rank 0's
    assert "BatchNorm statistics recomputed on 16 training batches" in proc.stdout + proc.stderr
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["iteration"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the all-reduced validation of the two shards equals one process evaluating every image
    single = evaluate_in_process(run_dir / "checkpoints" / "last.pt", tmp_path / "eval")
    assert metrics["pixel_acc"] == pytest.approx(single["pixel_acc"], abs=1e-9)
    assert metrics["miou"] == pytest.approx(single["miou"], abs=1e-9)
    if sampler == "rare_class":  # both ranks read one cache of the masks' classes, written whole
        assert len(list((tmp_path / "cache" / "label_counts").glob("*.json"))) == 1
        assert not list((tmp_path / "cache").rglob("*.tmp*"))


def test_a_run_does_not_depend_on_whether_the_label_counts_were_cached(tiny_data, tmp_path):
    """The start-up scan of the training masks (cold cache) must not move the random state the model is
    initialised from: a run with a warm cache ends with the same weights."""
    cache = tmp_path / "cache"
    cold = train(
        tiny_config(tiny_data, **{"paths.cache_dir": cache, "trainer.max_iters": 2}), tmp_path / "cold"
    )
    assert list((cache / "label_counts").glob("*.json"))
    warm = train(
        tiny_config(tiny_data, **{"paths.cache_dir": cache, "trainer.max_iters": 2}), tmp_path / "warm"
    )
    assert cold == warm
    a = load_checkpoint(tmp_path / "cold" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "warm" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("entry", "args", "message"),
    [
        ("evaluate.py", [], "error: checkpoint is not set; give it on the command line, e.g. checkpoint=..."),
        (
            "-m",
            ["deeplab.predict", "checkpoint=x.pt"],
            "error: input is not set; give it on the command line, e.g. input=...",
        ),
    ],
)
def test_a_missing_mandatory_value_is_one_line_with_exit_2(entry, args, message, tmp_path):
    proc = run_cli(entry, *args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [message]


@pytest.mark.slow  # two launches of two processes: about 20 s
def test_two_nodes_of_one_process_equal_one_node_of_two(tiny_data, tmp_path):
    """`torchrun --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:PORT train.py`
    started twice on this machine, as two nodes would start it (gloo): the same weights as one node of two
    processes (the ranks, world size and seeds are the same; one process with the whole batch differs, since
    BatchNorm normalises each process's share). SLURM (srun) and Kubernetes' PyTorchJob set the same variables."""
    import socket
    import subprocess
    import sys

    from helpers.processes import ROOT

    args = tiny_overrides(tiny_data, **{"trainer.max_iters": 2, "trainer.batch_size": 4})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={r}",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{port}",
                "--rdzv_id=two-nodes",
                "train.py",
                *args,
                f"hydra.run.dir={tmp_path / 'nodes'}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    one_node = run_cli(
        "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port + 1}", "train.py", *args,
        f"hydra.run.dir={tmp_path / 'one'}",
    )  # fmt: skip
    assert one_node.returncode == 0, one_node.stderr[-3000:]
    a = load_checkpoint(tmp_path / "nodes" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
