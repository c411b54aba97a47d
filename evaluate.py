"""Evaluate a checkpoint: `python evaluate.py checkpoint=PATH [eval.output_stride=8] [eval.scales=[...]] [eval.flip=true]`."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.cli import hydra_main


@hydra_main(config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    from deeplab.cli import exit_on_user_error
    from deeplab.deploy.evaluate import evaluate_checkpoint

    with exit_on_user_error():
        metrics = evaluate_checkpoint(cfg, Path(HydraConfig.get().runtime.output_dir))
    return float(metrics["miou"])


if __name__ == "__main__":
    main()
