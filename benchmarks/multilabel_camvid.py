"""Multi-label against softmax on real photos: CamVid's 11 classes plus 3 classes that contain some of them, so
that every labelled pixel has one or two classes (a taxonomy: a car is also a vehicle).

    python benchmarks/multilabel_camvid.py --root ../shared/data [--iters 300] [--seeds 0,1,2] [--work DIR]
        [--multilabel KEY=VALUE ...] [-- extra overrides]

The peer, trained in the same run with the same recipe, is the usual softmax model on the 11 classes; its
scores for the 3 containing classes come from its confusion matrix, merged (a pixel predicted as road is
predicted as ground). The multi-label model learns all 14 classes at once, a sigmoid each. Both are
experiment=camvid_cpu cut to minutes (`--iters` iterations of 4 crops of 240x320, validated once on the 101 whole
validation photos), without class weights, or with --weighted each model's own: the softmax's median-frequency
class weights (camvid_cpu's loss.class_weights=auto) and the multi-label loss.pos_weight=auto. The multi-label masks are written under
--work as dataset=folder's per-class layout (the photos linked, not copied). Each seed trains both models; the
table gives the mean over the seeds (and the range of the difference). A run folder that holds its metrics.json
already is read, not trained again (a rerun with more seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import describe_machine
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
           "bicyclist"]  # fmt: skip
CONTAINING = {"ground": ["road", "pavement"], "vehicle": ["car", "bicyclist"],
              "structure": ["building", "pole", "sign_symbol", "fence"]}  # fmt: skip
VOID = 11


def recipe(iters: int) -> list[str]:
    return [
        "experiment=camvid_cpu", f"trainer.max_iters={iters}", "trainer.batch_size=4", "trainer.crop_size=[240,320]",
        f"trainer.eval_interval={iters}", f"trainer.ckpt_interval={iters}", "trainer.deterministic=true",
        "logger=csv",
    ]  # fmt: skip


def write_multilabel(camvid: Path, out: Path) -> None:
    """out/<split>/images (links to the photos) and out/<split>/masks/<class>/<name>.png of 0 / 1 / 255 (void)."""
    names = CLASSES + list(CONTAINING)
    for split in ("train", "val"):
        images = out / split / "images"
        images.mkdir(parents=True, exist_ok=True)
        for name in names:
            (out / split / "masks" / name).mkdir(parents=True, exist_ok=True)
        for photo in sorted((camvid / split).glob("*.png")):
            link = images / photo.name
            if not link.exists():
                os.symlink(photo.resolve(), link)
            ids = np.asarray(Image.open(camvid / f"{split}annot" / photo.name))
            void = ids == VOID
            for name in names:
                members = [CLASSES.index(m) for m in CONTAINING.get(name, [name])]
                mask = np.isin(ids, members).astype(np.uint8)
                mask[void] = 255
                Image.fromarray(mask).save(out / split / "masks" / name / photo.name)


def train(args: list[str], folder: Path) -> tuple[dict, float]:
    """(metrics.json, minutes) of `python train.py args` in folder (0 minutes: read from an earlier run)."""
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text()), 0.0
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", *args, f"hydra.run.dir={folder}"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{folder.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads((folder / "metrics.json").read_text()), (time.perf_counter() - tic) / 60


def merged_iou(matrix: np.ndarray, members: list[int]) -> float:
    """IoU of the union of `members` in a single-label confusion matrix (rows = truth)."""
    inside = np.zeros(len(matrix), bool)
    inside[members] = True
    tp = matrix[np.ix_(inside, inside)].sum()
    fn, fp = matrix[inside][:, ~inside].sum(), matrix[~inside][:, inside].sum()
    return float(tp / (tp + fp + fn))


def run_name(seed: int, overrides: list[str]) -> str:
    """The multi-label run's folder: its seed and overrides, in characters a Hydra override takes unquoted."""
    name = "_".join([f"multilabel_seed{seed}", *overrides])
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:120]


def scores(
    root: str, iters: int, seed: int, work: Path, extra: list[str], multilabel: list[str], weighted: bool
) -> list[tuple[str, float, float]]:
    """(class, softmax IoU, multi-label IoU) of one seed's pair of runs; `multilabel`: overrides of the
    multi-label model alone (its run folder is named after them); `weighted`: the softmax model with
    loss.class_weights=auto (camvid_cpu's), the multi-label one with loss.pos_weight=auto."""
    base = [*recipe(iters), f"trainer.seed={seed}", *extra]
    softmax_dir = work / f"softmax_seed{seed}{'_weighted' if weighted else ''}"
    softmax, minutes_s = train(
        [*base, f"loss.class_weights={'auto' if weighted else 'null'}", f"dataset.root={root}"], softmax_dir
    )
    # camvid_cpu sets loss.class_weights=auto: a multi-label model has none (another loss has no such key)
    unweighted = (
        "~loss.class_weights" if any(o.startswith("loss=") for o in multilabel) else "loss.class_weights=null"
    )
    if weighted:
        multilabel = ["loss.pos_weight=auto", *multilabel]
    names = CLASSES + list(CONTAINING)
    data = work / "data"
    sigmoid, minutes_m = train([
        *base, "dataset=folder", "dataset.multilabel=true", f"dataset.num_classes={len(names)}",
        f"dataset.class_names=[{','.join(names)}]", f"dataset.train.images={data / 'train' / 'images'}",
        f"dataset.train.masks={data / 'train' / 'masks'}", f"dataset.val.images={data / 'val' / 'images'}",
        f"dataset.val.masks={data / 'val' / 'masks'}", unweighted, *multilabel,
    ], work / run_name(seed, multilabel))  # fmt: skip
    with open(softmax_dir / "confusion_matrix.csv") as f:
        matrix = np.array([[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]], dtype=np.int64)
    base_s, base_m = (
        np.nanmean(softmax["iou_per_class"]),
        np.nanmean(sigmoid["iou_per_class"][: len(CLASSES)]),
    )
    print(f"seed {seed}: softmax mIoU {100 * base_s:.2f} ({minutes_s:.1f} min), multi-label mIoU of the same 11 "
          f"classes {100 * base_m:.2f} ({minutes_m:.1f} min)")  # fmt: skip
    rows = []
    for i, name in enumerate(names):
        members = [CLASSES.index(m) for m in CONTAINING[name]] if name in CONTAINING else []
        peer = merged_iou(matrix, members) if members else softmax["iou_per_class"][i]
        rows.append((name, float(peer), float(sigmoid["iou_per_class"][i])))
    return rows


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="dataset.root of CamVid (the folder holding camvid/)")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, default=Path("outputs/multilabel_camvid"))
    parser.add_argument("--multilabel", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the multi-label model alone, e.g. loss.pos_weight=auto")  # fmt: skip
    parser.add_argument("--weighted", action="store_true",
                        help="loss.class_weights=auto for the softmax model, loss.pos_weight=auto for the other")  # fmt: skip
    parser.add_argument("extra", nargs="*", help="more overrides of the recipe (both models)")
    args = parser.parse_args(argv)
    print(describe_machine(torch.device("cpu")))
    work = args.work.resolve()
    write_multilabel(Path(args.root).resolve() / "camvid", work / "data")
    print(
        "recipe: "
        + " ".join(
            [*recipe(args.iters), f"loss.class_weights={'auto' if args.weighted else 'null'}", *args.extra]
        )
        + "; multi-label model: "
        + " ".join(args.multilabel)
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [
        scores(args.root, args.iters, seed, work, args.extra, args.multilabel, args.weighted)
        for seed in seeds
    ]
    names = [name for name, _, _ in runs[0]]
    peer = np.array([[p for _, p, _ in rows] for rows in runs]) * 100  # (seeds, classes)
    ours = np.array([[o for _, _, o in rows] for rows in runs]) * 100
    print(f"\nmean over seeds {seeds}, {args.iters} iterations each")
    print(
        "| class | softmax IoU | multi-label IoU | multi-label - softmax (range over seeds) |\n|---|---:|---:|---:|"
    )
    groups = [(name, [i]) for i, name in enumerate(names)] + [
        ("mIoU of the 11 classes", list(range(len(CLASSES)))),
        ("mIoU of the 3 containing classes", list(range(len(CLASSES), len(names)))),
    ]
    for name, columns in groups:
        p, o = peer[:, columns].mean(1), ours[:, columns].mean(1)  # (seeds,)
        d = o - p
        print(
            f"| {name} | {p.mean():.2f} | {o.mean():.2f} | {d.mean():+.2f} ({d.min():+.2f} to {d.max():+.2f}) |"
        )
    ratio = ours[:, : len(CLASSES)].mean() / peer[:, : len(CLASSES)].mean()
    print(f"ratio multi-label / softmax, mIoU of the 11 classes: {ratio:.3f}")
    return {"softmax": peer.tolist(), "multilabel": ours.tolist()}


if __name__ == "__main__":
    main()
