"""Label statistics of a dataset: pixel counts per class over its masks and the classes each mask holds (what
dataset.sampler=rare_class draws from), read in parallel and cached, and the check that stops a run whose labels
cannot be right (a class never present; binary masks stored as 0/255,
whose foreground is the ignore index)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deeplab.config import DatasetBase
from deeplab.data.dataset import SegmentationDataset, missing_files
from deeplab.data.loaders import batches
from deeplab.errors import DatasetError
from deeplab.runtime.signals import ignore_stop_signals

log = logging.getLogger(__name__)


class _Inspect(torch.utils.data.Dataset):
    """Reads each sample (or only its mask) and returns (index, problem or None, pixel counts per value)."""

    def __init__(self, dataset: SegmentationDataset, images: bool) -> None:
        self.dataset, self.images = dataset, images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, str | None, np.ndarray | None]:
        try:
            if self.images:
                _, _, counts = self.dataset.load(index)
            else:
                _, counts = self.dataset.load_mask(index)
        except DatasetError as e:
            return index, str(e), None
        return index, None, counts


def _first(item):  # batch_size=None: items pass through unbatched
    return item


@dataclass
class Scan:
    problems: list[str] = field(default_factory=list)  # one line each
    totals: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # pixels per label value
    good: int = 0  # samples read fine
    background_only: int = 0  # masks holding only class 0 and the ignore index (with some ignored pixels)
    presence: list[list[int]] = field(default_factory=list)  # per sample: the classes its mask holds


def scan(dataset: SegmentationDataset, workers: int = 0, desc: str = "", images: bool = True) -> Scan:
    """Read every sample (images=False: every mask) of a dataset: its problems and pixel counts."""
    result = Scan(problems=missing_files(dataset.samples))
    result.totals = np.zeros(max(dataset.num_labels, dataset.ignore_index + 1), dtype=np.int64)
    result.presence = [[] for _ in dataset.samples]
    keep = [
        i for i, s in enumerate(dataset.samples) if s.mask.is_file() and (not images or s.image.is_file())
    ]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(_Inspect(dataset, images), keep), batch_size=None, num_workers=workers,
        collate_fn=_first, worker_init_fn=ignore_stop_signals,
        generator=torch.Generator(),  # not the global RNG: a run must not depend on whether counts were cached
    )  # fmt: skip
    ignore = dataset.ignore_index
    # Closed also on an error or a stop signal, which shuts its workers down (a stop signal at start-up
    # raises here, in the main process, and the generator would otherwise outlive it in the traceback).
    items = batches(loader)
    try:
        for index, problem, counts in tqdm(items, total=len(keep), desc=desc or dataset.name, unit=" masks"):
            if problem is not None:
                result.problems.append(problem)
                continue
            result.good += 1
            classes = np.flatnonzero(counts[: dataset.num_labels])
            result.presence[index] = [int(c) for c in classes if c != ignore]
            if len(counts) > len(result.totals):
                result.totals = np.pad(result.totals, (0, len(counts) - len(result.totals)))
            result.totals[: len(counts)] += counts
            only_zero = not counts[1 : dataset.num_labels].any()  # multi-label masks have no background class
            if ignore < len(counts) and counts[ignore] and only_zero and not dataset.multilabel:
                result.background_only += 1
    finally:
        items.close()
    return result


def _cache_key(dataset: SegmentationDataset) -> str:
    """What the counts depend on: every mask file (path, size, time) and how its values are read."""
    digest = hashlib.sha256()
    for index in range(len(dataset.samples)):
        for path in dataset.mask_files(index):
            st = path.stat()
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    how = [
        dataset.num_labels,
        dataset.ignore_index,
        dataset.masks.binary_values,
        getattr(dataset, "binary_values", None),  # a multi-label dataset's
        dataset.multilabel,
        "presence, absent",
    ]  # v3: multi-label counts hold the absent pixels per class (deeplab.data.multilabel.multilabel_counts)
    digest.update(json.dumps(how).encode())
    for table in (dataset.masks.colors, dataset.masks.color_ids):
        digest.update(b"-" if table is None else table.tobytes())
    return digest.hexdigest()[:32]


@dataclass
class LabelStats:
    counts: np.ndarray  # (values,) int64: pixels per label value over all masks
    presence: list[list[int]]  # per sample: the classes (not the ignore index) its mask holds


def label_counts(dataset: SegmentationDataset, cache_dir: Path | None, workers: int = 0) -> np.ndarray:
    """Pixels per label value over all masks of a dataset (int64), cached under cache_dir/label_counts."""
    return label_stats(dataset, cache_dir, workers).counts


def label_stats(dataset: SegmentationDataset, cache_dir: Path | None, workers: int = 0) -> LabelStats:
    """Pixels per label value and the classes of each mask, cached under cache_dir/label_counts."""
    cached = (
        Path(cache_dir).expanduser() / "label_counts" / f"{_cache_key(dataset)}.json" if cache_dir else None
    )
    if cached is not None and cached.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            saved = json.loads(cached.read_text())
            return LabelStats(np.asarray(saved["counts"], dtype=np.int64), saved["presence"])
    result = scan(dataset, workers, desc=f"counting labels of {dataset.name}", images=False)
    if result.problems:
        more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        raise DatasetError(f"{result.problems[0]}{more}")
    if cached is not None:
        try:  # the cache is a convenience: a read-only home directory only costs the next run a scan
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            saved = {"dataset": dataset.name, "counts": result.totals.tolist(), "presence": result.presence}
            tmp.write_text(json.dumps(saved, separators=(",", ":")))
            tmp.replace(cached)
        except OSError as e:
            log.warning("could not cache the label counts in %s: %s", cached.parent, e)
    return LabelStats(result.totals, result.presence)


def check_labels(totals: np.ndarray, d: DatasetBase, num_masks: int, where: str) -> None:
    """Stop a run whose training masks cannot teach every class (one line, with the fix)."""
    names, ignore = d.label_names(), d.ignore_index
    n = len(names)
    ignored = int(totals[ignore]) if ignore < len(totals) else 0
    if ignored and not totals[1:n].any() and not d.multilabel:  # multi-label masks have no background class
        raise DatasetError(
            f"the {num_masks} training masks of {where} hold only 0 and {ignore} (the ignore index): no pixel of "
            f"any other class, so training would learn only class 0 and validation score only it. Binary masks "
            f"stored as 0/{ignore}? Set dataset.binary_values=[0,{ignore}] (dataset=folder), or remap the masks "
            "to 0/1"
        )
    absent = [f"{names[i]} ({i})" for i in range(n) if i != ignore and totals[i] == 0]
    if absent:
        them = "them" if len(absent) > 1 else "it"
        raise DatasetError(
            f"no pixel of class {', '.join(absent)} in any of the {num_masks} training masks of {where}: the "
            f"model cannot learn {them}; check the masks' values (python -m deeplab.data.check), set "
            "dataset.num_classes and dataset.class_names to the classes present, or dataset.check_labels=false "
            "to train anyway"
        )


def balanced_pos_weight(present: Sequence[int], absent: Sequence[int]) -> list[float]:
    """loss.pos_weight=auto: sqrt(absent / present pixels) of each class; 1 for a class never present.

    The square root damps the full ratio as median-frequency weights damp inverse frequencies: on CamVid with the
    full ratio (torch's BCEWithLogitsLoss suggestion) a 300-iteration multi-label model over-predicted the common
    classes (sky 73.6 IoU against 90.8 unweighted) and scored 37.6 mIoU, with the square root 49.1, unweighted 35.5
    (benchmarks/multilabel_camvid.py, benchmarks/RESULTS.md)."""
    return [math.sqrt(float(a) / p) if p > 0 else 1.0 for p, a in zip(present, absent)]


def median_frequency_weights(pixel_counts: Sequence[int]) -> list[float]:
    """Median-frequency balancing: median(f) / f_c, f_c the share of class c among the valid pixels, the
    median over the classes that occur; a class with no pixel gets weight 0."""
    counts = torch.tensor([float(n) for n in pixel_counts], dtype=torch.float64)
    if not bool((counts > 0).any()):
        raise ValueError("no labelled pixel to compute class weights from")
    share = counts / counts.sum()
    median = share[counts > 0].median()  # torch's lower median for an even count
    weights = torch.where(counts > 0, median / share.clamp(min=1e-30), torch.zeros_like(share))
    return [float(w) for w in weights]
