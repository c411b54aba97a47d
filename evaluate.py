"""Evaluate a checkpoint: `python evaluate.py checkpoint=PATH [eval.output_stride=8] [eval.scales=[...]] [eval.flip=true]`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.errors import UserError


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    from deeplab.evaluation import evaluate_checkpoint

    try:
        metrics = evaluate_checkpoint(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return float(metrics["miou"])


if __name__ == "__main__":
    main()
