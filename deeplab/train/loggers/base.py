"""The logger interface the training loop calls, and the fan-out to the configured loggers (rank 0 only).

No step twice after a resume: a logger either rewinds to the resumed iteration when it opens (TensorBoard's
purge_step, the CSV file's rows), or sends only what a checkpoint holds (HeldTracker: MLflow, W&B), since a
resumed run redoes every iteration after its last.pt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Logger(Protocol):
    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Namespaced scalars (train/loss, val/mIoU, val/IoU/<class>) at an optimizer step."""

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 image or rendered figure."""

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The flattened config with the final metrics, at the end of a run."""

    def artifact(self, name: str, value: Path | Mapping[str, Any]) -> None:
        """A file of the run (metrics.json), or a JSON document (the model card), kept by the tracking service
        under `name`."""

    def checkpointed(self, step: int) -> None:
        """last.pt now holds `step`: what was logged up to it is final."""

    def close(self) -> None: ...


class HeldTracker:
    """The part of a tracking service's logger (MLflow, W&B) that holds scalars and images back until a
    checkpoint holds their step: a run resumed from last.pt redoes the steps after it, and such a service
    cannot forget a logged point. A subclass sends them (send) and opens and ends its run."""

    def __init__(self, start_step: int) -> None:
        self.after = start_step  # the resumed iteration: steps up to it were sent by the run before
        self.sent_upto = start_step
        self.rows: dict[int, dict[str, float]] = {}
        self.images: dict[int, dict[str, np.ndarray]] = {}  # (H, W, 3) uint8 by tag

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if step > self.after:
            self.rows.setdefault(step, {}).update(values)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if step > self.after:
            self.images.setdefault(step, {})[tag] = image

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The config was sent when the run began; the final metrics are its last points."""

    def checkpointed(self, step: int) -> None:
        """Send the held steps up to `step`, in step order; later ones stay held."""
        ready = sorted(s for s in self.rows.keys() | self.images.keys() if s <= step)
        self.send([(s, self.rows.pop(s, {}), self.images.pop(s, {})) for s in ready])
        self.sent_upto = max(self.sent_upto, step)

    def send(self, steps: list[tuple[int, dict[str, float], dict[str, np.ndarray]]]) -> None:
        """(step, scalars, images) of each step, in step order."""
        raise NotImplementedError


class Loggers:
    """Every configured logger at once (none on ranks other than 0)."""

    def __init__(self, loggers: Sequence[Logger]) -> None:
        self.loggers = list(loggers)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.scalars(values, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        for lg in self.loggers:
            lg.image(tag, image, step)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        for lg in self.loggers:
            lg.hparams(hparams, metrics)

    def artifact(self, name: str, value: Path | Mapping[str, Any]) -> None:
        for lg in self.loggers:
            lg.artifact(name, value)

    def checkpointed(self, step: int) -> None:
        for lg in self.loggers:
            lg.checkpointed(step)

    def close(self) -> None:
        """Close each logger once (also after an error: closing again does nothing)."""
        loggers, self.loggers = self.loggers, []
        for lg in loggers:
            lg.close()
