"""Train DeepLabv3 / DeepLabv3+: `python train.py experiment=quickstart` (see configs/train.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.errors import UserError


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    from deeplab.engine import TrainingInterrupted, train  # after Hydra has set up logging

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = train(cfg, run_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as e:
        # SIGTERM / SIGUSR1 / Ctrl-C: last.pt is written and the engine has said so. Exit 128 + the signal
        # number (143, 138, 130), as if the signal had ended the process, so that job scripts and schedulers
        # see an unfinished run (and may requeue it with trainer.resume=auto).
        sys.exit(e.exit_code)
    # Hydra sweepers (e.g. Optuna) maximise what main returns.
    return float(metrics[cfg.get("optimized_metric", "miou")])


if __name__ == "__main__":
    main()
