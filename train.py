"""Train DeepLabv3 / DeepLabv3+: `python train.py experiment=quickstart` (see configs/train.yaml)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from deeplab.cli import hydra_main


@hydra_main(config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    # Imported after Hydra has set up logging.
    from deeplab.config import train_config
    from deeplab.errors import UserError
    from deeplab.runtime.signals import TrainingInterrupted
    from deeplab.train.sweep import write_status

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = train_config(cfg)  # before any data is listed or model built, and before torch is imported
        from deeplab.train.engine import train

        metrics = train(config, run_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        write_status(run_dir, "failed", str(e))
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One failed job does not end a sweep: it is recorded (status.json, the sweep summary), and Hydra's
            # Optuna sweeper counts the NaN as a failed trial.
            return math.nan
        sys.exit(2)
    except TrainingInterrupted as e:
        # SIGTERM / SIGUSR1 / SIGHUP / Ctrl-C: last.pt is written and the engine has said so. Exit 128 + the
        # signal number (143, 138, 129, 130), as if the signal had ended the process, so that job scripts and
        # schedulers see an unfinished run (and may requeue it with trainer.resume=auto).
        write_status(run_dir, "interrupted", str(e))
        sys.exit(e.exit_code)
    write_status(run_dir, "finished", reason=metrics.get("stopped_early", ""))
    # Hydra sweepers (e.g. Optuna) maximise what main returns.
    return float(metrics[config.optimized_metric])


if __name__ == "__main__":
    main()
