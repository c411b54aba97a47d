"""MLflow tracking: params are the flattened config, metrics and images per optimizer step, artifacts
metrics.json and the model card; the run is named after the run dir, and a resumed run continues the same MLflow run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deeplab.errors import ConfigError, first_line
from deeplab.jsonfile import write_json
from deeplab.train.loggers.base import HeldTracker

MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
RUN_FILE = "mlflow_run.json"  # in the run dir: the MLflow run a resumed run continues


def metric_name(key: str) -> str:
    """key with the characters MLflow refuses in a metric name (a class named "road (paved)") as "_"."""
    return re.sub(r"[^\w\-. /]", "_", key)


def default_tracking_uri(run_dir: Path) -> str:
    """The mlruns/ folder beside the run dir (outputs/train/mlruns), shared by the runs there."""
    return str((run_dir.parent / "mlruns").resolve())


# At start-up a tracking server gets a few seconds: MLflow's own defaults (7 retries with backoff factor 2,
# 120 s per request) waited over four minutes for an address where nothing listens.
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `values` (where the user has not set them) inside the block."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def reachable_client(client_class: Any, uri: str) -> Any:
    """An MlflowClient whose store answers (the experiments are listed once, before the first iteration, with
    retries and timeout bounded); a store that cannot be used is one ConfigError naming the key."""
    try:
        with _environment(PROBE_ENV):
            client = client_class(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - MlflowException, OSError, requests: all mean the store is unusable
        raise ConfigError(
            f"logger.mlflow.tracking_uri={uri}: the MLflow store cannot be used ({first_line(e)[:300]}); give a "
            "folder you can write to, or the address of a tracking server that answers"
        ) from None
    return client


class MlflowLogger(HeldTracker):
    def __init__(
        self,
        run_dir: Path,
        start_step: int,
        tracking_uri: str | None,
        experiment: str,
        params: Mapping[str, Any],
    ) -> None:
        uri = tracking_uri or default_tracking_uri(run_dir)
        if "://" not in uri or uri.startswith("file:"):
            # MLflow 3 keeps the folder store (mlruns/) in maintenance mode behind this switch; it needs no
            # database or server, which is what a local store is for.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise ConfigError('logger=mlflow needs MLflow: pip install -e ".[mlflow]"') from None
        record = run_dir / RUN_FILE
        super().__init__(start_step, record)
        self.client = reachable_client(MlflowClient, uri)
        if start_step and record.is_file():  # a resumed run continues its MLflow run
            self.run_id = json.loads(record.read_text())["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        write_json(record, {"run_id": self.run_id, "tracking_uri": uri, "sent_upto": 0})
        from mlflow.entities import Param

        # MLflow caps a param's value at 6000 characters (a long class list)
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def artifact(self, name: str, value: Path | Mapping[str, Any]) -> None:
        if isinstance(value, Path):
            self.client.log_artifact(self.run_id, str(value))
        else:
            self.client.log_dict(self.run_id, dict(value), name)

    def send(self, steps: list[tuple[int, dict[str, float], dict[str, np.ndarray]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_name(k), float(v), now, s) for s, row, _ in steps for k, v in row.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
        for s, _, images in steps:
            for tag, image in images.items():  # the UI's images by key and step (artifacts under images/)
                self.client.log_image(self.run_id, image, key=metric_name(tag), step=s)

    def close(self, status: str = "finished") -> None:
        """Steps a checkpoint holds are sent (the last validation follows its last.pt); later ones, logged
        before a crash, are redone by the resumed run. The run shows KILLED after a stop signal (a resumed
        run sets it RUNNING again), FAILED after an error."""
        self.checkpointed(self.sent_upto)
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS[status])
