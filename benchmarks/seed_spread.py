"""The spread of val mIoU between seeds: the same recipe trained with N seeds (trainer.deterministic=true), and
one seed trained twice to show that a seed gives one result.

    python benchmarks/seed_spread.py --root ../shared/data [--seeds 0,1,2,3,4] [--repeat 0] [--work DIR]
        [-- extra overrides]

The default recipe is CamVid's CPU recipe (experiment=camvid_cpu: DeepLabv3+ on ImageNet EfficientNet-Lite0)
cut to minutes on a 2-core CPU: 150 iterations of 4 crops of 240x320, validated once at the end on the 101
whole validation photos. Each run is `python train.py` in its own process and run folder; the script reads
their metrics.json and prints each seed's mIoU, the mean, the sample standard deviation and the range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import describe_machine

ROOT = Path(__file__).resolve().parents[1]
RECIPE = [
    "experiment=camvid_cpu", "trainer.max_iters=150", "trainer.batch_size=4", "trainer.crop_size=[240,320]",
    "trainer.eval_interval=150", "trainer.ckpt_interval=150", "trainer.deterministic=true", "logger=csv",
]  # fmt: skip


def run(seed: int, folder: Path, root: str, extra: list[str]) -> tuple[float, float]:
    """(val mIoU, minutes) of one training run."""
    tic = time.perf_counter()
    args = [*RECIPE, f"dataset.root={root}", f"trainer.seed={seed}", f"hydra.run.dir={folder}", *extra]
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed} failed:\n{proc.stderr[-2000:]}")
    metrics = json.loads((folder / "metrics.json").read_text())
    return float(metrics["miou"]), (time.perf_counter() - tic) / 60


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="dataset.root of CamVid (the folder holding camvid/)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--repeat", type=int, default=0, help="a seed trained a second time (-1: none)")
    parser.add_argument("--work", type=Path, default=Path("outputs/seed_spread"))
    parser.add_argument("extra", nargs="*", help="more overrides of the recipe")
    args = parser.parse_args(argv)
    print(describe_machine(torch.device("cpu")))
    print("recipe: " + " ".join(RECIPE + args.extra))
    seeds = [int(s) for s in args.seeds.split(",")]
    scores: dict[int, float] = {}
    for seed in seeds:
        scores[seed], minutes = run(seed, args.work / f"seed{seed}", args.root, args.extra)
        print(f"seed {seed}: val mIoU {100 * scores[seed]:.2f} ({minutes:.1f} min)")
    values = [100 * v for v in scores.values()]
    mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    print(
        f"{len(values)} seeds: mean {mean:.2f}, standard deviation {std:.2f}, range {min(values):.2f} to "
        f"{max(values):.2f} ({max(values) - min(values):.2f} points)"
    )
    result: dict[str, object] = {"scores": scores, "mean": mean, "std": std}
    if args.repeat >= 0:
        again, minutes = run(args.repeat, args.work / f"seed{args.repeat}_again", args.root, args.extra)
        first = scores.get(args.repeat)
        if first is None:
            first, _ = run(args.repeat, args.work / f"seed{args.repeat}", args.root, args.extra)
        print(f"seed {args.repeat} again: val mIoU {100 * again:.2f} (first run {100 * first:.2f}, difference "
              f"{100 * (again - first):+.4f} points; {minutes:.1f} min)")  # fmt: skip
        result["repeat"] = {"first": first, "again": again}
    return result


if __name__ == "__main__":
    main()
