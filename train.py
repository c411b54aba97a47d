"""Train DeepLabv3 / DeepLabv3+: `python train.py experiment=quickstart` (see configs/train.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    # Imported after Hydra has set up logging.
    from deeplab.cli import exit_on_user_error
    from deeplab.config import train_config
    from deeplab.engine import TrainingInterrupted, train

    with exit_on_user_error():
        config = train_config(cfg)  # before any data is listed or model built
        try:
            metrics = train(config, Path(HydraConfig.get().runtime.output_dir))
        except TrainingInterrupted as e:
            # SIGTERM / SIGUSR1 / Ctrl-C: last.pt is written and the engine has said so. Exit 128 + the signal
            # number (143, 138, 130), as if the signal had ended the process, so that job scripts and
            # schedulers see an unfinished run (and may requeue it with trainer.resume=auto).
            sys.exit(e.exit_code)
    # Hydra sweepers (e.g. Optuna) maximise what main returns.
    return float(metrics[config.optimized_metric])


if __name__ == "__main__":
    main()
