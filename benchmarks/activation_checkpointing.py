"""Peak training memory and step time with and without trainer.activation_checkpointing, measured in the same
run: DeepLabv3+ ResNet-101 at output stride 8, 513x513 crops (the setting that does not fit small GPUs).

    python benchmarks/activation_checkpointing.py [--batch 2] [--crop 513] [--steps 1] [--device auto]

Each mode runs in a fresh process, so that its peak is its own: one warm-up step, then --steps timed training
steps (forward, loss, backward, SGD step). Memory: on CUDA torch.cuda.max_memory_allocated; on the CPU the
process's peak resident set (ru_maxrss) minus the resident set before the first step, i.e. what the step
itself needs (activations, gradients, optimiser state, allocator caches). Prints the ratios checkpointing/plain.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from common import compose_config, describe_machine, resolve_device

from deeplab.models import build_model
from deeplab.train.losses import SegmentationLoss
from deeplab.train.optim import build_optimizer

MODEL = ["model=deeplabv3plus", "backbone=resnet101", "backbone.output_stride=8", "backbone.pretrained=false"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one_mode(checkpointing: bool, batch: int, crop: int, steps: int, device_name: str) -> dict[str, float]:
    device = resolve_device(device_name)
    torch.manual_seed(0)
    cfg = compose_config([*MODEL, f"trainer.activation_checkpointing={str(checkpointing).lower()}"])
    model = build_model(cfg).to(device).train()
    model.backbone.set_activation_checkpointing(checkpointing)
    optimizer = build_optimizer(cfg.optim, model)
    criterion = SegmentationLoss(21)
    images = torch.randn(batch, 3, crop, crop, device=device)
    masks = torch.randint(0, 21, (batch, crop, crop), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = criterion(model(images), masks)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    before = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    step()  # warm-up: the peak is set here already
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - tic) / steps
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return {"step_s": seconds, "peak_mb": peak}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=513)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", choices=("plain", "checkpointing"), help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args(argv)
    if args.mode:
        print(
            json.dumps(one_mode(args.mode == "checkpointing", args.batch, args.crop, args.steps, args.device))
        )
        return {}
    print(describe_machine(resolve_device(args.device)))
    print(
        f"DeepLabv3+ R101 OS 8, batch {args.batch}, crop {args.crop}, {args.steps} timed step(s) after a warm-up"
    )
    results = {}
    for mode in ("plain", "checkpointing"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, *(argv if argv is not None else sys.argv[1:])],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode:<14} step {results[mode]['step_s']:8.2f} s   peak {results[mode]['peak_mb']:9.0f} MB")
    memory = results["checkpointing"]["peak_mb"] / results["plain"]["peak_mb"]
    time_ratio = results["checkpointing"]["step_s"] / results["plain"]["step_s"]
    print(
        f"checkpointing / plain: peak memory {memory:.2f} ({1 - memory:.0%} less), step time {time_ratio:.2f}x "
        "(target: at least 40% less memory for at most 1.35x the time)"
    )
    return {"results": results, "memory_ratio": memory, "time_ratio": time_ratio}


if __name__ == "__main__":
    main()
