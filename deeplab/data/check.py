"""Scan a whole dataset and report every problem at once, with pixel counts per class.

    python -m deeplab.data.check dataset=voc_aug dataset.root=/data [--split train|val|all] [--workers N]

Arguments with `=` are Hydra overrides of configs/train.yaml. Exit status 1 if any problem was found in the
data, 2 for a mistake in the config.
"""

from __future__ import annotations

import sys

import numpy as np
from hydra.errors import HydraException

from deeplab.cli import ArgumentParser, composition_error
from deeplab.config import TrainConfig, config_dir, train_config
from deeplab.data import load_split
from deeplab.data.stats import check_labels, median_frequency_weights, scan
from deeplab.errors import ConfigError, DatasetError, UserError, first_line

RARE_SHARE = 0.001  # a class under 0.1% of the class pixels is named as rare


def print_counts(
    totals: np.ndarray, names: list[str], ignore: int, weights: bool = False, multilabel: bool = False
) -> None:
    """Pixels per class, their share of all pixels and of the class pixels (the ignore index left out), and
    with `weights` (the training split) the median-frequency weights loss.class_weights=auto would use. A
    multi-label dataset's counts are each class's present pixels (and the ignored (pixel, class) pairs)."""
    total = max(int(totals.sum()), 1)
    classes = np.array([0 if i == ignore else int(totals[i]) for i in range(len(names))], dtype=np.int64)
    labelled = max(int(classes.sum()), 1)
    # what loss.class_weights=auto computes from the same counts (deeplab.train.engine)
    auto = median_frequency_weights(totals[: len(names)].tolist()) if weights and classes.any() else None
    width = max(len(n) for n in names + ["ignore"])
    head = f"  {'id':>4}  {'class':<{width}}  {'pixels':>14}  {'share':>7}  {'of classes':>10}"
    print(head + (f"  {'auto weight':>11}" if auto else ""))
    for i, name in enumerate(names):
        if i == ignore:
            continue
        line = f"  {i:>4}  {name:<{width}}  {int(totals[i]):>14,}  {100 * totals[i] / total:>6.2f}%"
        line += f"  {100 * classes[i] / labelled:>9.2f}%"
        print(line + (f"  {auto[i]:>11.3g}" if auto else ""))
    if ignore < len(totals):
        print(
            f"  {ignore:>4}  {'ignore':<{width}}  {int(totals[ignore]):>14,}  {100 * totals[ignore] / total:>6.2f}%"
        )
    absent = [names[i] for i in range(len(names)) if i != ignore and totals[i] == 0]
    if absent:
        print(f"  classes with no pixels: {', '.join(absent)}")
    rare = [
        f"{names[i]} {100 * c / labelled:.3f}%"
        for i, c in enumerate(classes)
        if 0 < c < RARE_SHARE * labelled
    ]
    remedy = (
        "raise their loss.pos_weight"
        if multilabel
        else "weight the classes (loss.class_weights=auto) or draw their images more often (dataset.sampler=rare_class)"
    )
    if rare:
        print(
            f"  warning: rare classes (under {RARE_SHARE:.1%} of the class pixels): {', '.join(rare)}; a model may "
            f"learn never to predict them: {remedy}"
        )


def check(cfg: TrainConfig, splits: list[str], workers: int = 0) -> int:
    """Scan the splits; print problems and class pixel counts; return the number of problems."""
    # binary (one class): masks hold 0 (background) and 1 (the class)
    names, ignore = cfg.dataset.label_names(), cfg.dataset.ignore_index
    n_problems = 0
    for split in splits:
        dataset = load_split(cfg, split, augment=False, check_files=False, strict_labels=True)
        result = scan(dataset, workers, desc=f"checking {split}")
        problems = dataset.listing_problems + result.problems
        if split == "train" and result.good:
            try:  # the labels as a whole: a class never present, binary masks stored as 0/255
                check_labels(result.totals, cfg.dataset, result.good, f"{cfg.dataset.name} train")
            except DatasetError as e:
                problems.append(str(e))
        print(
            f"{cfg.dataset.name} {split}: {len(dataset):,} listed, {result.good:,} read fine, "
            f"{len(problems):,} problems"
        )
        for p in problems:
            print(f"  problem: {p}")
        if result.background_only:
            print(f"  note: {result.background_only} masks hold only class 0 and the ignore index {ignore}")
        multilabel = cfg.dataset.multilabel  # class weights (a softmax's) have no multi-label meaning
        print_counts(result.totals[: max(len(names), ignore + 1)], names, ignore,
                     weights=split == "train" and not multilabel, multilabel=multilabel)  # fmt: skip
        n_problems += len(problems)
    return n_problems


def config_or_error(overrides: list[str]) -> TrainConfig | None:
    """The train config the data commands take as Hydra overrides; a mistake is printed as one line (None)."""
    from deeplab.config.compose import compose_train_config

    try:
        return train_config(compose_train_config(overrides))
    except (HydraException, ConfigError) as e:
        print(f"error: {composition_error(e, config_dir=config_dir()) or first_line(e)}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:

    parser = ArgumentParser(prog="python -m deeplab.data.check", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=voc dataset.root=/data")
    parser.add_argument("--split", choices=("train", "val", "all"), default="all")
    parser.add_argument("--workers", type=int, default=0, help="reader processes (0: in this process)")
    args = parser.parse_args(argv)
    cfg = config_or_error(args.overrides)
    if cfg is None:
        return 2
    splits = ["train", "val"] if args.split == "all" else [args.split]
    try:
        n_problems = check(cfg, splits, args.workers)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if n_problems:
        print(f"{n_problems} problem(s) found", file=sys.stderr)
        return 1
    print("no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
