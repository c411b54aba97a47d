"""DataLoader throughput of the train and eval pipelines on VOC-sized JPEGs, per number of workers.

Runs the project's real loaders (deeplab.data.loaders.build_train_loader / build_val_loader over a dataset from
deeplab.data.build_dataset, uint8 output as the engine asks for) on generated images in the VOC layout,
copying each batch to the device as the engine does (pinned memory and non-blocking copies on CUDA).
Prints images/s and images/s per worker, and whether a training step running at --gpu-rate images/s
would wait for data.

    python benchmarks/data_loader.py --workers 0,1,2,4,8 [--num-images 200] [--size voc] [--crop 513]
    python benchmarks/data_loader.py --data-dir /tmp/voc_sized --num-images 1449   # keep the files

The first batches of each loader (one per worker: start-up and the first decode) are not timed; after
them the workers deliver in turn, so the timed batches measure the steady rate.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import torch
from common import (
    VOC_SIZES,
    compose_config,
    describe_machine,
    int_list,
    median,
    parse_size,
    resolve_device,
    synchronize,
    usable_cores,
    write_voc_images,
)
from torch.utils.data import DataLoader

from deeplab.data import build_dataset
from deeplab.data.loaders import build_train_loader, build_val_loader


def sizes_arg(text: str) -> list[tuple[int, int]]:
    """'voc' (a mix of typical VOC sizes) or one WxH size."""
    return list(VOC_SIZES) if text == "voc" else [parse_size(text)]


def loader_rate(loader: DataLoader, workers: int, batches: int, device: torch.device) -> float:
    """Images/s of `batches` batches after one untimed batch per worker, each batch copied to the device."""
    it = iter(loader)
    for _ in range(max(1, workers)):
        next(it)
    synchronize(device)
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        try:
            images, masks = next(it)[:2]
        except StopIteration:
            break
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        count += images.shape[0]
    synchronize(device)
    elapsed = time.perf_counter() - start
    del it  # shuts the workers down
    return count / elapsed if count else float("nan")  # nan: fewer batches than workers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2", help="comma list of DataLoader worker counts")
    parser.add_argument("--num-images", type=int, default=200, help="generated images per split")
    parser.add_argument("--size", default="voc", help="voc (typical VOC sizes, long side 500) or WxH")
    parser.add_argument("--crop", type=int, default=513, help="train crop (trainer.crop_size)")
    parser.add_argument("--batch", type=int, default=16, help="train batch per process")
    parser.add_argument("--eval-batch", type=int, default=1, help="eval.batch_size")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions; figures are medians")
    parser.add_argument("--gpu-rate", type=float, default=500.0, help="training step rate to feed, images/s")
    parser.add_argument(
        "--gpu-eval-rate", type=float, default=145.0, help="evaluation rate to feed (1,449 images in 10 s)"
    )
    parser.add_argument("--device", default="auto", help="where batches are copied: auto | cpu | cuda")
    parser.add_argument(
        "--data-dir", default=None, help="keep the generated images here (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    pin = device.type == "cuda"
    workers = int_list(args.workers)
    sizes = sizes_arg(args.size)
    print(describe_machine(device))
    with tempfile.TemporaryDirectory() as tmp:
        root = write_voc_images(args.data_dir or tmp, args.num_images, args.num_images, sizes)
        cfg = compose_config(["dataset=voc", f"dataset.root={root}", f"trainer.crop_size={args.crop}"])
        train_set = build_dataset(cfg, "train")
        val_set = build_dataset(cfg, "val")
        size_text = (
            "x".join(map(str, sizes[0]))
            if len(sizes) == 1
            else "VOC sizes " + ", ".join(f"{w}x{h}" for w, h in sizes)
        )
        print(
            f"{args.num_images} JPEGs per split ({size_text}); train: batch {args.batch}, crop {args.crop}, "
            f"scale 0.5-2, flip; eval: whole images, batch {args.eval_batch}; uint8 out, copied to {device}"
            f"{' from pinned memory' if pin else ''}; medians of {args.rounds} rounds"
        )
        rates: dict[str, dict[int, list[float]]] = {
            "train": {w: [] for w in workers},
            "eval": {w: [] for w in workers},
        }
        for _ in range(args.rounds):
            for w in workers:
                train_loader = build_train_loader(train_set, args.batch, w, seed=0, pin_memory=pin)
                # Enough batches for every worker to deliver a few, whatever the image count.
                n_train = max(1, w) * max(2, math.ceil(args.num_images / args.batch / max(1, w)))
                rates["train"][w].append(loader_rate(train_loader, w, n_train, device))
                del train_loader
                val_loader = build_val_loader(val_set, args.eval_batch, w, pin_memory=pin)
                rates["eval"][w].append(loader_rate(val_loader, w, len(val_loader), device))
                del val_loader

    results: dict[str, dict[int, float]] = {
        pipeline: {w: median(v) for w, v in per_worker.items()} for pipeline, per_worker in rates.items()
    }
    target = {"train": args.gpu_rate, "eval": args.gpu_eval_rate}
    header = f"{'pipeline':<8} {'workers':>7} {'images/s':>9} {'per worker':>10}  {'GPU at':>10}"
    print(header)
    print("-" * (len(header) + 20))
    for pipeline in ("train", "eval"):
        for w in workers:
            rate = results[pipeline][w]
            per = rate / max(1, w)  # 0 workers: the main process loads
            verdict = "keeps up" if rate >= target[pipeline] else "the GPU would wait"
            print(f"{pipeline:<8} {w:>7} {rate:>9.1f} {per:>10.1f}  {target[pipeline]:>6g} img/s: {verdict}")
    # Workers needed at the per-worker rate of the largest tested count.
    for pipeline in ("train", "eval"):
        w = max(workers)
        per = results[pipeline][w] / max(1, w)
        needed = math.ceil(target[pipeline] / per) if per > 0 else "?"
        print(
            f"{pipeline}: {per:.1f} images/s per worker (at {w} workers) -> about {needed} workers to feed "
            f"{target[pipeline]:g} images/s; this host has {usable_cores()} cores"
        )
    return results


if __name__ == "__main__":
    main()
