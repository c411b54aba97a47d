"""TensorBoard: event files in the run dir's tensorboard/ folder (the default logger)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter

# metrics.json key -> the tag of the final metrics in the HPARAMS tab
HPARAM_METRICS = ("pixel_acc", "mean_acc", "miou", "fwiou")


class TensorBoardLogger:
    def __init__(self, run_dir: Path, start_step: int, revalidate: bool = False) -> None:
        # purge_step drops the events logged after the checkpoint a run resumes from, and those of a run that
        # was killed before its first checkpoint when this one starts over (start_step 0). A run that validates
        # its start step again (revalidate) drops that step too, and recover() writes its scalars back.
        self.rewound = revalidate and start_step > 0
        purge = start_step if self.rewound else start_step + 1
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        self.closed = False

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The HPARAMS tab: the hyperparameters with the final metrics, in the same run directory."""
        final = {f"hparam/{k}": float(metrics[k]) for k in HPARAM_METRICS}
        self.writer.add_hparams(dict(hparams), final, run_name=".")

    def artifact(self, name: str, value: Path | Mapping[str, Any]) -> None:
        """The files lie in the run dir already, and the card in the checkpoints."""

    def flush(self) -> None:
        self.writer.flush()  # before last.pt: the curves up to it survive a crash that keeps it

    def checkpointed(self, step: int) -> None:
        self.writer.flush()

    def recover(self, rows: Mapping[int, Mapping[str, float]], start_step: int) -> None:
        if (
            self.rewound and start_step in rows
        ):  # the start step's training scalars, purged with its validation
            self.scalars(rows[start_step], start_step)

    def close(self, status: str = "finished") -> None:
        self.writer.close()
