"""Weights & Biases: offline (a run folder under the run dir's wandb/, `wandb sync` uploads it) unless the
user has logged in; the config, scalars and images per optimizer step, metrics.json and the model card."""

from __future__ import annotations

import json
import netrc
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from deeplab.errors import ConfigError
from deeplab.jsonfile import write_json
from deeplab.train.loggers.base import HeldTracker

RUN_FILE = "wandb_run.json"  # in the run dir: the W&B run id a resumed run continues


def logged_in() -> bool:
    """Whether W&B has the user's API key: WANDB_API_KEY, or `wandb login`'s entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(HeldTracker):
    def __init__(self, run_dir: Path, start_step: int, project: str, config: Mapping[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError('logger=wandb needs W&B: pip install -e ".[wandb]"') from None
        record = run_dir / RUN_FILE
        super().__init__(start_step, record)  # W&B cannot forget a step: only what last.pt holds is sent
        resumed = start_step > 0 and record.is_file()
        run_id = json.loads(record.read_text())["id"] if resumed else secrets.token_hex(4)
        # WANDB_MODE, when set, is the user's choice; else online only with their key
        mode = os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")
        self.run = wandb.init(
            project=project, name=run_dir.name, id=run_id, resume="allow" if resumed else None,
            dir=str(run_dir), mode=mode, config=dict(config),  # type: ignore[arg-type]
        )  # fmt: skip
        write_json(record, {"id": run_id, "project": project, "sent_upto": self.sent_upto})

    def artifact(self, name: str, value: Path | Mapping[str, Any]) -> None:
        target = Path(self.run.dir) / name  # the run's files/ folder, uploaded with it
        target.write_text(value.read_text() if isinstance(value, Path) else json.dumps(dict(value), indent=2))

    def send(self, steps: list[tuple[int, dict[str, float], dict[str, np.ndarray]]]) -> None:
        import wandb

        for s, row, images in steps:  # W&B takes steps in increasing order only
            self.run.log({**row, **{tag: wandb.Image(image) for tag, image in images.items()}}, step=s)

    def close(self, status: str = "finished") -> None:
        """Steps a checkpoint holds are sent; later ones, logged before a crash, are redone on resume. A run
        that did not finish ends with exit code 1 (W&B shows it as crashed, and a resumed run continues it)."""
        self.checkpointed(self.sent_upto)
        self.run.finish(exit_code=0 if status == "finished" else 1)
