"""Evaluation time: seconds for deeplab.train.engine.evaluate over N VOC-sized images, and the confusion
matrix's share of it.

Generates N images in the VOC layout (the Pascal VOC val split has 1,449), builds the model (random
weights: the time does not depend on them) and the project's val loader, and times evaluate() as training
calls it: whole images, uint8 batches normalised on the device, autocast and channels_last as the engine
resolves them (bf16 and channels_last on CUDA; evaluate() turns cudnn autotuning off, since image sizes
vary). The confusion matrix's
share is measured apart: ConfusionMatrix.update on label tensors of the same sizes, as many times as
evaluate() calls it, synchronised on CUDA.

    python benchmarks/evaluate.py                       # 1,449 images, DeepLabv3+ R101 OS 16
    python benchmarks/evaluate.py --device cpu --num-images 50 --model v3p_r50_os16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter

import torch
from common import (
    MODEL_HELP,
    VOC_SIZES,
    compose_config,
    describe_machine,
    flag_arg,
    model_overrides,
    parse_size,
    resolve_device,
    synchronize,
    timed,
    usable_cores,
    write_voc_images,
)
from torch.utils.data import Subset

from deeplab.data import build_dataset
from deeplab.data.loaders import build_val_loader
from deeplab.evaluation.loop import evaluate
from deeplab.evaluation.metrics import ConfusionMatrix
from deeplab.models import build_model
from deeplab.runtime import Runtime, resolve_amp, resolve_flag


def update_shapes(sizes: list[tuple[int, int]], batch: int) -> Counter:
    """How many ConfusionMatrix.update calls evaluate() makes per label shape (B, H, W): one per batch of
    equal sizes, else one per image (it runs differently sized images alone)."""
    shapes: Counter = Counter()
    for i in range(0, len(sizes), batch):
        chunk = sizes[i : i + batch]
        if len(set(chunk)) == 1:
            shapes[(len(chunk), *chunk[0])] += 1
        else:
            shapes.update((1, h, w) for h, w in chunk)
    return shapes


def confusion_seconds(shapes: Counter, num_classes: int, device: torch.device) -> tuple[float, int]:
    """(seconds, calls) of ConfusionMatrix.update on int64 predictions and labels of the given shapes,
    each shape as many times as evaluate() updates with it."""
    cm = ConfusionMatrix(num_classes, ignore_index=255, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    total, count = 0.0, 0
    for shape, n in shapes.items():
        pred = torch.randint(0, num_classes, shape, device=device, generator=gen)
        truth = torch.randint(0, num_classes, shape, device=device, generator=gen)
        truth[:, :2] = 255  # a few ignored pixels, as VOC's boundary band
        cm.update(pred, truth)  # warm-up of the kernels for this shape
        total += timed(lambda p=pred, t=truth: cm.update(p, t), n, device)
        count += n
    return total, count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=1449, help="generated val images")
    parser.add_argument("--size", default="voc", help="voc (typical VOC sizes, long side 500) or WxH")
    parser.add_argument("--model", default="v3p_r101_os16", help=MODEL_HELP)
    parser.add_argument("--batch", type=int, default=1, help="eval.batch_size")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: min(8, cores))")
    parser.add_argument("--amp", default="auto", help="auto (bf16 on CUDA) | bf16 | off")
    parser.add_argument("--channels-last", default="auto", help="auto (on with CUDA) | true | false")
    parser.add_argument(
        "--passes", type=int, default=None, help="evaluations in a row (default: 2 on CUDA, 1 on the CPU)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: its default); 1 is steadier on a busy host",
    )
    parser.add_argument(
        "--data-dir", default=None, help="keep the generated images here (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    amp = resolve_amp(args.amp, device, "--amp")
    channels_last = resolve_flag(flag_arg(args.channels_last), device)
    rt = Runtime(device, amp, channels_last)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    workers = args.workers if args.workers is not None else min(8, usable_cores())
    sizes = list(VOC_SIZES) if args.size == "voc" else [parse_size(args.size)]
    print(describe_machine(device))

    with tempfile.TemporaryDirectory() as tmp:
        root = write_voc_images(args.data_dir or tmp, 0, args.num_images, sizes)
        cfg = compose_config([*model_overrides(args.model), "dataset=voc", f"dataset.root={root}"])
        val_set = build_dataset(cfg, "val")
        num_classes = int(cfg.dataset.num_classes)
        model = build_model(cfg).to(device).eval()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        kwargs = {"num_classes": num_classes, "ignore_index": 255}
        normalize = rt.normalizer(cfg.dataset.mean, cfg.dataset.std)
        # Warm-up on one image of each size: library start-up and per-shape kernel set-up.
        warm = Subset(val_set, list(range(min(len(sizes), len(val_set)))))
        start = time.perf_counter()
        for _ in range(2):  # the CPU's oneDNN also needs a second call per shape to reach its speed
            evaluate(model, build_val_loader(warm, args.batch, 0), rt, normalize, **kwargs)
        synchronize(device)
        warmup_s = time.perf_counter() - start

        # The engine keeps one val loader with persistent workers: the first evaluation starts them, later
        # ones (every trainer.eval_interval) find them running.
        loader = build_val_loader(val_set, args.batch, workers, pin_memory=cuda)
        pass_s = []
        for _ in range(args.passes or (2 if cuda else 1)):
            synchronize(device)
            start = time.perf_counter()
            cm = evaluate(model, loader, rt, normalize, **kwargs).cm
            metrics = cm.compute()  # reads the matrix back: the end of the device's work
            synchronize(device)
            pass_s.append(time.perf_counter() - start)
        del loader
        eval_s = pass_s[-1]

    image_sizes = [(h, w) for w, h in (sizes[i % len(sizes)] for i in range(args.num_images))]
    cm_s, cm_calls = confusion_seconds(update_shapes(image_sizes, args.batch), num_classes, device)
    pixels = sum(h * w for h, w in image_sizes)
    share = cm_s / eval_s
    size_text = "x".join(map(str, sizes[0])) if len(sizes) == 1 else "VOC sizes"
    print(
        f"{args.model}, {args.num_images} images ({size_text}, {pixels / 1e6:.1f} Mpixel), batch {args.batch}, "
        f"{workers} workers, amp {amp}, channels_last {channels_last}"
    )
    print(f"warm-up ({len(warm)} images, one per size, untimed): {warmup_s:.2f} s")
    if len(pass_s) > 1:
        print(
            f"passes: {', '.join(f'{s:.2f}' for s in pass_s)} s (the first starts the {workers} workers); "
            "the figures below are the last pass"
        )
    print(
        f"evaluate: {eval_s:.2f} s for {args.num_images} images = {args.num_images / eval_s:.1f} images/s "
        f"(1,449 images: {eval_s * 1449 / args.num_images:.1f} s at this rate); "
        f"mIoU of the random model {metrics['miou']:.3f}"
    )
    print(
        f"confusion matrix: {cm_s * 1e3:.1f} ms for {cm_calls} updates "
        f"({cm_s / cm_calls * 1e6:.0f} us each) = {100 * share:.2f}% of the evaluation"
    )
    return {
        "eval_s": eval_s,
        "pass_s": pass_s,
        "images_per_s": args.num_images / eval_s,
        "cm_s": cm_s,
        "cm_share": share,
    }


if __name__ == "__main__":
    main()
