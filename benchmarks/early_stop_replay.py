"""What trainer.early_stop would have done to a finished run: its validation curve (metrics.csv of the csv logger)
replayed through the training loop's own rule (deeplab.train.engine.early_stop) for several patience values.

    python benchmarks/early_stop_replay.py RUN_DIR [--patience 3,5,8] [--min-delta 0.005]

A run with trainer.deterministic=true is the same run up to where early stopping ends it (tests/test_early_stop.py
and the quickstart measurement in docs/training.md check this), so the replay gives the iteration it stops at, the
best val mIoU best.pt would hold, and the training minutes at that point (train/minutes of the last logged step
before it), against the full run's best and minutes.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from deeplab.config import EarlyStopConfig
from deeplab.train.engine import early_stop


def curve(run_dir: Path) -> tuple[list[tuple[int, float]], dict[int, float]]:
    """([(iteration, val mIoU)], {iteration: training minutes}) of a run's metrics.csv."""
    validations, minutes = [], {}
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            if row.get("val/mIoU"):
                validations.append((step, float(row["val/mIoU"])))
            if row.get("train/minutes"):
                minutes[step] = float(row["train/minutes"])
    return validations, minutes


def replay(validations: list[tuple[int, float]], patience: int, min_delta: float) -> tuple[int, float, int]:
    """(iteration it stops at, or the last; best mIoU; its iteration) under the loop's rule."""
    state = {"best": -1.0, "iteration": 0, "stale": 0, "stopped": None}
    cfg = EarlyStopConfig(patience=patience, min_delta=min_delta)
    for iteration, score in validations:
        early_stop(state, cfg, score, iteration)
        if state["stopped"]:
            return iteration, state["best"], state["iteration"]
    best_iteration, best = max(validations, key=lambda v: v[1])
    return validations[-1][0], best, best_iteration


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--patience", default="3,5,8")
    parser.add_argument("--min-delta", type=float, default=0.005)
    args = parser.parse_args(argv)
    validations, minutes = curve(args.run_dir)
    last = validations[-1][0]
    full_best = max(v for _, v in validations)
    full_minutes = minutes[max(minutes)]
    print(
        f"{args.run_dir}: {len(validations)} validations, best {100 * full_best:.2f}, {full_minutes:.1f} training min"
    )
    print("| patience | stops at | best.pt mIoU (iteration) | training minutes | saved | mIoU lost |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for patience in (int(p) for p in args.patience.split(",")):
        stop, best, at = replay(validations, patience, args.min_delta)
        spent = minutes[max(s for s in minutes if s <= stop)]
        stops = f"{stop}" if stop < last else f"{stop} (never)"
        print(f"| {patience} | {stops} | {100 * best:.2f} ({at}) | {spent:.1f} | {1 - spent / full_minutes:.0%} | "
              f"{100 * (full_best - best):.2f} |")  # fmt: skip
        rows.append({"patience": patience, "stop": stop, "best": best, "minutes": spent})
    return rows


if __name__ == "__main__":
    main()
