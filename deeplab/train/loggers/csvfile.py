"""metrics.csv in the run dir: one row per logged step, a column per scalar (empty where not logged)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deeplab.atomicfile import atomic_path


class CsvLogger:
    def __init__(self, run_dir: Path, start_step: int) -> None:
        self.path = run_dir / "metrics.csv"
        self.rows: dict[int, dict[str, str | float]] = {}
        if start_step and self.path.is_file():  # a resumed run: the rows up to its checkpoint
            with self.path.open(newline="") as f:
                for row in csv.DictReader(f):
                    step = int(row.pop("step"))
                    if step <= start_step:
                        self.rows[step] = {k: v for k, v in row.items() if v != ""}

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self.rows.setdefault(step, {}).update({k: float(v) for k, v in values.items()})

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A table holds no images."""

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The config lies in the run dir (.hydra/config.yaml) and in the checkpoints."""

    def artifact(self, name: str, value: Path | Mapping[str, Any]) -> None:
        """The files lie in the run dir already, and the card in the checkpoints."""

    def flush(self) -> None:
        self.write()  # before last.pt: a run resumed from an earlier one drops the rows after that

    def checkpointed(self, step: int) -> None:
        self.write()

    def recover(self, rows: Mapping[int, Mapping[str, float]], start_step: int) -> None:
        for step, row in rows.items():
            if step <= start_step:
                kept = self.rows.setdefault(step, {})
                kept.update({k: float(v) for k, v in row.items() if k not in kept})

    def close(self, status: str = "finished") -> None:
        self.write()

    def write(self) -> None:
        if not self.rows and not self.path.exists():
            return  # nothing logged (a run that failed to start)
        columns = list(dict.fromkeys(k for row in self.rows.values() for k in row))
        out = io.StringIO()
        writer = csv.DictWriter(out, ["step", *columns], lineterminator="\n")
        writer.writeheader()
        for step in sorted(self.rows):
            writer.writerow({"step": step, **self.rows[step]})
        with atomic_path(self.path) as tmp:  # whole or not at all
            tmp.write_text(out.getvalue())
