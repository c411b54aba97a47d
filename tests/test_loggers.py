"""The logger list: TensorBoard, CSV and MLflow at once, each step once after a resume, one line for a
missing library."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.configs import one_thread, tiny_config
from helpers.interrupt import interrupted_at
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deeplab.config import train_config
from deeplab.errors import ConfigError
from deeplab.train.engine import train
from deeplab.train.loggers import build_loggers


def wandb_records(run_dir: Path) -> list[Any]:
    """The records (wandb_internal_pb2.Record) of the offline W&B run folders under run_dir/wandb, in order:
    each run-<id>.wandb file is a LevelDB-style log (32 KiB blocks of records with a 7-byte header: checksum,
    length, type 1 full / 2 first / 3 middle / 4 last), after a 7-byte ':W&B' file header."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, pieces = path.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
            if kind == 0:  # the block's zero-filled tail
                pos += left
                continue
            pieces += data[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):
                records.append(wandb_internal_pb2.Record.FromString(pieces))
                pieces = b""
    return records


def wandb_history(run_dir: Path) -> list[dict[str, float]]:
    """The history rows of the offline W&B runs under run_dir, in order."""
    rows = []
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            rows.append({k: v for k, v in items.items() if not k.startswith("_") or k == "_step"})
    return rows


def _steps(path, column: str) -> list[int]:
    with path.open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get(column)]


def test_tensorboard_csv_and_mlflow_log_each_step_once_across_a_resume(tiny_data, tmp_path, monkeypatch):
    """Killed while writing last.pt at iteration 4 (last.pt of 2 kept), resumed with resume=auto: TensorBoard,
    metrics.csv, the MLflow run and the offline W&B run (each the same one, continued) hold steps 1..4 once
    each, and the last val/mIoU of each equals metrics.json."""
    mlflow = pytest.importorskip("mlflow")  # the [mlflow] and [wandb] extras (in dev)
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc of `wandb login`: offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir, store = tmp_path / "run", tmp_path / "mlruns"
    options = {
        "logger": "[tensorboard,csv,mlflow,wandb]", "logger.mlflow.tracking_uri": store,
        "logger.mlflow.experiment": "sweep-a", "logger.wandb.project": "voc-runs",
    }  # fmt: skip
    with interrupted_at(monkeypatch, 4, written=False), one_thread(), pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_data, **options), run_dir)
    # rows 3 and 4, written before the crash, are dropped by the resumed run
    assert _steps(run_dir / "metrics.csv", "train/loss") == [1, 2, 3, 4]
    with one_thread():
        train(tiny_config(tiny_data, **options, **{"trainer.resume": "auto"}), run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())

    assert _steps(run_dir / "metrics.csv", "train/loss") == [1, 2, 3, 4]
    assert _steps(run_dir / "metrics.csv", "val/mIoU") == [2, 4]
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["val/mIoU"]) == pytest.approx(saved["miou"])
    assert float(rows[-1]["val/IoU/disc"]) == pytest.approx(saved["iou_per_class"][1])

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    # sorted: event files of the same second are read in the order of a counter compared as text
    assert sorted(e.step for e in events.Scalars("train/loss")) == [1, 2, 3, 4]

    client = mlflow.MlflowClient(tracking_uri=str(store))
    [experiment] = [e for e in client.search_experiments() if e.name == "sweep-a"]  # logger.mlflow.experiment
    [run] = client.search_runs([experiment.experiment_id])  # the resumed run continued the same MLflow run
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]
    history = client.get_metric_history(run.info.run_id, "val/mIoU")
    assert [m.step for m in history] == [2, 4] and history[-1].value == pytest.approx(saved["miou"])
    assert run.data.params["trainer.max_iters"] == "4" and run.data.params["backbone.name"] == "resnet_tiny"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "model_card.json"} <= artifacts
    # The validation images (examples, confusion matrix), each at its step once: MLflow's images by key.
    images = [a.path.split("/")[-1].split("+") for a in client.list_artifacts(run.info.run_id, "images")]
    tags = ["val~confusion_matrix", "val~example_0", "val~example_1"]
    assert sorted((n[0], int(n[2])) for n in images if n[-1].endswith(".png")) == [
        (t, s) for t in tags for s in (2, 4)
    ]
    history = wandb_history(run_dir)
    assert [r["_step"] for r in history] == [1, 2, 3, 4]
    for row in history[1], history[3]:  # W&B's: image files in the offline run, named in the history
        for tag in ("val/confusion_matrix", "val/example_0", "val/example_1"):
            assert row[f"{tag}/_type"] == "image-file"
            [image] = run_dir.glob(f"wandb/offline-run-*/files/{row[f'{tag}/path']}")
            assert image.stat().st_size == row[f"{tag}/size"]
    assert not any("val/example_0/_type" in r for r in (history[0], history[2]))
    assert history[-1]["val/mIoU"] == pytest.approx(saved["miou"])
    assert len({p.name.rsplit("-", 1)[1] for p in run_dir.glob("wandb/offline-run-*")}) == 1  # one run id
    runs = [r.run for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "run"]
    assert runs and {r.project for r in runs} == {"voc-runs"}  # logger.wandb.project
    card_file = client.download_artifacts(run.info.run_id, "model_card.json", str(tmp_path))
    card = json.loads(Path(card_file).read_text())
    assert card["provenance"]["iteration"] == 4 and card["provenance"]["metrics"]["miou"] == saved["miou"]


def test_logger_choices_and_a_missing_library(tiny_data, tmp_path, monkeypatch):
    cfg = train_config(tiny_config(tiny_data, logger="[]"))
    assert not build_loggers(cfg, tmp_path, 0, is_main=True)
    cfg = train_config(tiny_config(tiny_data, **{"logger.tensorboard": "false"}))  # the flag of older configs
    assert cfg.logger.tensorboard is None
    cfg = train_config(tiny_config(tiny_data, logger="[tensorboard,csv]"))
    assert not build_loggers(cfg, tmp_path / "rank1", 0, is_main=False)  # only rank 0 logs
    assert not (tmp_path / "rank1").exists()

    # a class name MLflow refuses in a metric name is made one it takes
    if importlib.util.find_spec("mlflow"):
        from deeplab.train.loggers.mlflow_tracking import MlflowLogger

        (tmp_path / "m").mkdir()
        logger = MlflowLogger(tmp_path / "m", 0, str(tmp_path / "mlruns"), "names", {})
        logger.scalars({"val/IoU/road (paved)": 0.5}, 1)
        logger.checkpointed(1)
        logger.close()
        history = logger.client.get_metric_history(logger.run_id, "val/IoU/road _paved_")
        assert [(m.step, m.value) for m in history] == [(1, 0.5)]

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the [wandb] extra were not installed
    cfg = train_config(tiny_config(tiny_data, logger="[csv,wandb]"))
    with pytest.raises(ConfigError) as e:
        build_loggers(cfg, tmp_path / "run", 0, is_main=True)
    assert str(e.value) == 'logger=wandb needs W&B: pip install -e ".[wandb]"'
    monkeypatch.setitem(sys.modules, "mlflow", None)
    cfg = train_config(tiny_config(tiny_data, logger="[tensorboard,mlflow]"))
    with pytest.raises(ConfigError) as e:
        build_loggers(cfg, tmp_path / "run", 0, is_main=True)
    assert str(e.value) == 'logger=mlflow needs MLflow: pip install -e ".[mlflow]"'


@pytest.mark.parametrize("start_step", [0, 2])
def test_tensorboard_and_csv_drop_the_steps_a_killed_run_logged_after_its_checkpoint(tmp_path, start_step):
    """A run killed before its first checkpoint starts over at step 1 (start_step 0); one killed after the
    checkpoint of step 2 resumes at step 3: in both, each step is in the curves once, the new run's value."""
    from deeplab.train.loggers.csvfile import CsvLogger
    from deeplab.train.loggers.tensorboard import TensorBoardLogger

    killed = [TensorBoardLogger(tmp_path, 0), CsvLogger(tmp_path, 0)]
    for step in range(1, 5):
        for lg in killed:
            lg.scalars({"train/loss": 10.0 + step}, step)
            if step == start_step:
                lg.checkpointed(step)
    killed[0].close()  # the CSV is written at checkpoints: its rows after step 2 are lost with the kill
    again = [TensorBoardLogger(tmp_path, start_step), CsvLogger(tmp_path, start_step)]
    for step in range(start_step + 1, 4):
        for lg in again:
            lg.scalars({"train/loss": float(step)}, step)
    for lg in again:
        lg.close()
    expected = [(s, 10.0 + s if s <= start_step else float(s)) for s in range(1, 4)]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == expected
    with (tmp_path / "metrics.csv").open() as f:
        assert [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f)] == expected


@pytest.mark.parametrize(
    "fault",
    [
        {"FAULT_SIGNAL": "6:SIGKILL"},  # after the validation of the checkpoint at 4, before the next one
        # last.pt of 8 written, its steps not yet written or sent; the validation of 8 logged, not yet sent
        pytest.param({"FAULT_KILL_AT": "after_save:8"}, marks=pytest.mark.slow),  # 10 s each: slow
        pytest.param({"FAULT_KILL_AT": "after_validation:8"}, marks=pytest.mark.slow),
    ],
    ids=["sigkill_at_6", "after_last_pt", "after_validation"],
)
def test_every_logger_holds_every_validation_once_after_a_sigkill_and_resume(
    tiny_data, tmp_path, fault, monkeypatch
):
    """experiment=tiny trainer.max_iters=12, checkpoints and validations every 4, TensorBoard + CSV + MLflow:
    SIGKILL to the process at a moment of the fault, then trainer.resume=auto: each logger has val/mIoU at 4, 8
    and 12 once, and train/loss at every logged step once."""
    pytest.importorskip("mlflow")
    from helpers.configs import tiny_overrides
    from helpers.processes import TrainProcess

    mlflow = importlib.import_module("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the folder store the run used
    run_dir, store = tmp_path / "run", tmp_path / "mlruns"
    options = {
        "trainer.max_iters": 12, "trainer.ckpt_interval": 4, "trainer.eval_interval": 4, "trainer.log_interval": 2,
        "logger": "[tensorboard,csv,mlflow]", "logger.mlflow.tracking_uri": store, "trainer.resume": "auto",
    }  # fmt: skip
    args = [*tiny_overrides(tiny_data, **options), f"hydra.run.dir={run_dir}"]
    killed = TrainProcess(args, tmp_path / "killed.log", fault)
    assert killed.proc.wait(timeout=300) == -9, killed.log()[-3000:]
    resumed = TrainProcess(args, tmp_path / "resumed.log")
    assert resumed.proc.wait(timeout=300) == 0, resumed.log()[-3000:]

    assert _steps(run_dir / "metrics.csv", "val/mIoU") == [4, 8, 12]
    assert _steps(run_dir / "metrics.csv", "train/loss") == [2, 4, 6, 8, 10, 12]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert sorted(e.step for e in events.Scalars("val/mIoU")) == [4, 8, 12]
    assert sorted(e.step for e in events.Scalars("train/loss")) == [2, 4, 6, 8, 10, 12]
    client = mlflow.MlflowClient(tracking_uri=str(store))
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mIoU")] == [4, 8, 12]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 4, 6, 8, 10, 12]


def test_an_unusable_mlflow_store_is_one_line_naming_the_key_within_seconds(tiny_data, tmp_path) -> None:
    """A path through a regular file, /proc, a URI of no scheme MLflow knows, an address where nothing listens
    (MLflow's own retries waited 264 s there): train.py checks the store before the first iteration, says so in
    one line and exits with 2, with status.json failed."""
    import time

    from helpers.configs import tiny_overrides
    from helpers.processes import run_cli

    pytest.importorskip("mlflow")
    (tmp_path / "file").write_text("a regular file\n")
    for i, uri in enumerate(
        [tmp_path / "file" / "mlruns", "/proc/1/mlruns", "garbage://:::", "http://127.0.0.1:9"]
    ):
        run_dir = tmp_path / f"run{i}"
        args = tiny_overrides(tiny_data, logger="[csv,mlflow]", **{"logger.mlflow.tracking_uri": uri})
        started = time.monotonic()
        done = run_cli("train.py", *args, f"hydra.run.dir={run_dir}")
        assert done.returncode == 2, done.stderr[-2000:]
        assert time.monotonic() - started < 60
        [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
        assert line.startswith(f"error: logger.mlflow.tracking_uri={uri}: the MLflow store cannot be used (")
        assert "Traceback" not in done.stderr
        assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
        if i == 0:
            break  # one process for the exit status and status.json; the others in this process, faster
    from deeplab.errors import ConfigError

    for uri in ["/proc/1/mlruns", "garbage://:::", "http://127.0.0.1:9"]:
        started = time.monotonic()
        with pytest.raises(
            ConfigError, match=rf"^logger.mlflow.tracking_uri={re.escape(uri)}: the MLflow store"
        ):
            build_loggers(
                train_config(
                    tiny_config(tiny_data, logger="[mlflow]", **{"logger.mlflow.tracking_uri": uri})
                ),
                tmp_path / "r",
                0,
                True,
            )
        assert time.monotonic() - started < 30


def test_an_interrupted_run_shows_killed_in_mlflow_and_finished_once_resumed(
    tiny_data, tmp_path, monkeypatch
):
    """SIGTERM during training: the MLflow run is KILLED, not FINISHED; the resumed run ends it FINISHED."""
    import os
    import signal

    import deeplab.train.losses
    from deeplab.train.engine import TrainingInterrupted

    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store, run_dir = tmp_path / "mlruns", tmp_path / "run"
    options = {"logger": "[mlflow]", "logger.mlflow.tracking_uri": store, "trainer.resume": "auto"}
    real, calls = deeplab.train.losses.SegmentationLoss.forward, []

    def terminated_at_step_2(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    with monkeypatch.context() as m, one_thread(), pytest.raises(TrainingInterrupted):
        m.setattr(deeplab.train.losses.SegmentationLoss, "forward", terminated_at_step_2)
        train(tiny_config(tiny_data, **options), run_dir)
    client = mlflow.MlflowClient(tracking_uri=str(store))
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"
    with one_thread():
        train(tiny_config(tiny_data, **options), run_dir)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
