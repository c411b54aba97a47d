"""Validation mIoU against training minutes, from runs' metrics.csv (logger=[tensorboard,csv]), as one PNG.

    python benchmarks/learning_curves.py RUN_DIR[=LABEL] ... --out docs/camvid_curves.png [--anchor 53.2=LABEL]

The minutes are the train/minutes column (wall-clock minutes of training, validations included) of the row of
the validation's iteration; --anchor draws a published figure as a horizontal line.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(run_dir: Path) -> tuple[list[float], list[float]]:
    """(minutes, val mIoU in %) of each validation of a run."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: train with logger=[tensorboard,csv]")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    minutes = {int(r["step"]): float(r["train/minutes"]) for r in rows if r.get("train/minutes")}
    curve = [(minutes[int(r["step"])], 100 * float(r["val/mIoU"])) for r in rows if r.get("val/mIoU")]
    curve = [c for c in curve if c[0] is not None]
    if not curve:
        raise SystemExit(f"{path} has no validation rows with train/minutes")
    return [c[0] for c in curve], [c[1] for c in curve]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=LABEL")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--anchor", action="append", default=[], help="VALUE=LABEL: a published figure")
    parser.add_argument("--title", default="CamVid val mIoU against training minutes")
    parser.add_argument("--subtitle", default="", help="a second, smaller line (the machine, the command)")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for spec in args.runs:
        path, _, label = spec.partition("=")
        minutes, miou = read_curve(Path(path))
        ax.plot(minutes, miou, marker="o", label=label or Path(path).name)
        ax.annotate(f"{miou[-1]:.1f}", (minutes[-1], miou[-1]), textcoords="offset points", xytext=(4, -10))
    for spec in args.anchor:
        value, _, label = spec.partition("=")
        ax.axhline(float(value), linestyle="--", linewidth=1, color="gray")
        ax.text(0.01, float(value) + 0.4, label, transform=ax.get_yaxis_transform(), fontsize=8, color="gray")
    ax.set_xlim(left=0)
    ax.set_xlabel("training minutes (validations included)")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(args.title + (f"\n{args.subtitle}" if args.subtitle else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
