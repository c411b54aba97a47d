"""The loggers of the `logger` config group, several at once (logger=[tensorboard,csv,mlflow,wandb]).

Each is one small file behind the interface of base.py; the loop calls a Loggers, which is empty on ranks
other than 0.
"""

from __future__ import annotations

from pathlib import Path

from deeplab.config import TrainConfig, flatten
from deeplab.train.loggers.base import HeldTracker, Logger, Loggers

__all__ = ["HeldTracker", "Logger", "Loggers", "build_loggers"]


def build_loggers(
    cfg: TrainConfig, run_dir: Path, start_step: int, is_main: bool, revalidate: bool = False
) -> Loggers:
    """The configured loggers of rank 0 (start_step: the iteration a resumed run continues from, 0 for a
    new run; revalidate: it validates start_step again); the optional libraries are imported only when
    chosen."""
    if not is_main:
        return Loggers([])
    loggers: list[Logger] = []
    try:
        _open(cfg, run_dir, start_step, loggers, revalidate)
    except BaseException:  # a missing library: the ones opened already are closed
        Loggers(loggers).close()
        raise
    return Loggers(loggers)


def _open(cfg: TrainConfig, run_dir: Path, start_step: int, loggers: list[Logger], revalidate: bool) -> None:
    lg = cfg.logger
    if lg.tensorboard is not None:
        from deeplab.train.loggers.tensorboard import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, start_step, revalidate))
    if lg.csv is not None:
        from deeplab.train.loggers.csvfile import CsvLogger

        loggers.append(CsvLogger(run_dir, start_step))
    if lg.mlflow is not None:
        from deeplab.train.loggers.mlflow_tracking import MlflowLogger

        params = flatten(cfg.model_dump(mode="json"))
        loggers.append(
            MlflowLogger(run_dir, start_step, lg.mlflow.tracking_uri, lg.mlflow.experiment, params)
        )
    if lg.wandb is not None:
        from deeplab.train.loggers.wandb_run import WandbLogger

        loggers.append(WandbLogger(run_dir, start_step, lg.wandb.project, cfg.model_dump(mode="json")))
