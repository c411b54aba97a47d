"""The logger interface the training loop calls, and the fan-out to the configured loggers (rank 0 only).

No step twice after a resume, and none lost: a logger either writes its steps before last.pt and rewinds to
the resumed iteration when it opens (TensorBoard's purge_step, the CSV file's rows), or sends only what a
checkpoint holds (HeldTracker: MLflow, W&B), since a resumed run redoes every iteration after its last.pt.
last.pt also holds the scalars logged since the checkpoint before it (Loggers.recent): a run killed after
writing it and before sending them sends them when resumed, and each tracker records how far it has sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deeplab.jsonfile import write_json


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

    def flush(self) -> None:
        """Write what was logged so far (before last.pt is written; a resumed run rewinds what it does not hold)."""

    def checkpointed(self, step: int) -> None:
        """last.pt now holds `step`: what was logged up to it is final."""

    def recover(self, rows: Mapping[int, Mapping[str, float]], start_step: int) -> None:
        """A resumed run: the scalars of the steps up to start_step that last.pt holds, for a logger that may
        have missed them (killed after last.pt was written, before they were written or sent)."""

    def close(self, status: str = "finished") -> None:
        """status: finished, interrupted (a stop signal; resumable) or failed."""


class HeldTracker:
    """The part of a tracking service's logger (MLflow, W&B) that holds scalars and images back until a
    checkpoint holds their step: a run resumed from last.pt redoes the steps after it, and such a service
    cannot forget a logged point. A subclass sends them (send) and opens and ends its run."""

    def __init__(self, start_step: int, record: Path) -> None:
        # record: the run dir's JSON file of this tracker's run, with "sent_upto", the last step sent, and
        # "sent_names", the scalars and images sent at it (its validation may have been sent or not)
        self.record = record
        sent = self._recorded() if start_step else None
        # what the service holds, which it cannot forget: what the run before sent (never past its last
        # last.pt), else (a record from before it kept this) every step up to the checkpoint
        self.after, self.after_names = (start_step, None) if sent is None else sent
        self.sent_upto = self.after
        self.rows: dict[int, dict[str, float]] = {}
        self.images: dict[int, dict[str, np.ndarray]] = {}  # (H, W, 3) uint8 by tag

    def _recorded(self) -> tuple[int, set[str]] | None:
        try:
            saved = json.loads(self.record.read_text())
            return int(saved["sent_upto"]), set(saved.get("sent_names", []))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a run from before the record kept it: the checkpoint's step

    def _unsent(self, name: str, step: int) -> bool:
        """Whether `name` at `step` is new to the service: a step after what it holds, or a name it lacks at
        the last step it holds (a validation repeated by a resumed run, that was not sent before)."""
        return step > self.after or (
            step == self.after and self.after_names is not None and name not in self.after_names
        )

    def flush(self) -> None:
        """Held until a checkpoint holds their steps."""

    def recover(self, rows: Mapping[int, Mapping[str, float]], start_step: int) -> None:
        for step in sorted(rows):
            if step <= start_step:
                self.scalars(rows[step], step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        new = {k: v for k, v in values.items() if self._unsent(k, step)}
        if new:
            self.rows.setdefault(step, {}).update(new)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self._unsent(tag, step):
            self.images.setdefault(step, {})[tag] = image

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The config was sent when the run began; the final metrics are its last points."""

    def checkpointed(self, step: int) -> None:
        """Send the held steps up to `step`, in step order (later ones stay held), and record how far."""
        ready = sorted(s for s in self.rows.keys() | self.images.keys() if s <= step)
        if not ready:
            self.sent_upto = max(self.sent_upto, step)
            return
        steps = [(s, self.rows.pop(s, {}), self.images.pop(s, {})) for s in ready]
        self.send(steps)
        last, row, images = steps[-1]
        names = set(row) | set(images) | (self.after_names or set() if last == self.after else set())
        self.after, self.after_names = last, names
        self.sent_upto = max(self.sent_upto, step)
        saved = json.loads(self.record.read_text()) if self.record.is_file() else {}
        write_json(self.record, {**saved, "sent_upto": last, "sent_names": sorted(names)})

    def send(self, steps: list[tuple[int, dict[str, float], dict[str, np.ndarray]]]) -> None:
        """(step, scalars, images) of each step, in step order."""
        raise NotImplementedError


class Loggers:
    """Every configured logger at once (none on ranks other than 0). Keeps the scalars logged since the last
    checkpoint (recent), for last.pt to hold."""

    def __init__(self, loggers: Sequence[Logger]) -> None:
        self.loggers = list(loggers)
        self.recent: dict[int, dict[str, float]] = {}

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.loggers:
            self.recent.setdefault(step, {}).update({k: float(v) for k, v in values.items()})
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

    def flush(self) -> None:
        for lg in self.loggers:
            lg.flush()

    def unsent(self, step: int) -> dict[int, dict[str, float]]:
        """The scalars of the steps up to `step` logged since the last checkpoint (for last.pt to hold)."""
        return {s: dict(row) for s, row in self.recent.items() if s <= step}

    def checkpointed(self, step: int) -> None:
        for lg in self.loggers:
            lg.checkpointed(step)
        self.recent = {s: row for s, row in self.recent.items() if s > step}

    def recover(self, rows: Mapping[int, Mapping[str, float]], start_step: int) -> None:
        for lg in self.loggers:
            lg.recover(rows, start_step)

    def close(self, status: str = "finished") -> None:
        """Close each logger once (also after an error: closing again does nothing); status: finished,
        interrupted or failed, as the tracking services show the run."""
        loggers, self.loggers = self.loggers, []
        for lg in loggers:
            lg.close(status)
