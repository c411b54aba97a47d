"""What each plug point of the training loop adds to the CPU step time: a logger (TensorBoard, CSV, MLflow,
W&B) or the EMA weights, against the plain step, measured in the same run.

    python benchmarks/loop_overhead.py [--backbone resnet50] [--batch 2] [--crop 128] [--steps 20]
        [--rounds 3] [--log-interval 20] [--modes plain,ema,tensorboard,csv,mlflow,wandb] [--threads N]

A block is --steps training steps (forward, loss, backward, SGD step) of DeepLabv3+ with random weights on
random images. With a logger, each step of the block whose number is a multiple of --log-interval logs what
the loop logs at a log boundary (train/loss, lr, images/s), the last step also a validation's metrics
(val/*, per-class IoU) and a checkpoint (what makes MLflow and W&B send); with EMA each step updates the
average. The modes run in turn, round after round, so that a slow moment of the machine touches them
alike; a mode's overhead is the median over rounds of its block time over the plain block's of that round.
On a busy machine that ratio is as noisy as the machine, so each plug's own cost is also timed apart (an EMA
update; a log boundary with a validation's scalars and a checkpoint) and given as a share of the plain step.
MLflow logs to a local store and W&B offline, both in a temporary folder. Target: each adds at most 3%.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import compose_config

from deeplab.config import train_config
from deeplab.models import build_model
from deeplab.train.ema import build_ema
from deeplab.train.loggers import Loggers, build_loggers
from deeplab.train.loggers.records import train_scalars, val_scalars
from deeplab.train.losses import SegmentationLoss
from deeplab.train.optim import build_optimizer

LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--log-interval", type=int, default=20)
    parser.add_argument("--modes", default="plain,ema," + ",".join(LOGGERS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    if modes[0] != "plain":
        raise SystemExit("--modes must start with plain (the reference)")

    torch.manual_seed(0)
    overrides = [f"backbone={args.backbone}", "backbone.pretrained=false", "dataset=synthetic"]
    cfg = train_config(compose_config(overrides))
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg.optim, model)
    criterion = SegmentationLoss(cfg.dataset.num_classes)
    images = torch.randn(args.batch, 3, args.crop, args.crop)
    masks = torch.randint(0, cfg.dataset.num_classes, (args.batch, args.crop, args.crop))
    names = cfg.dataset.label_names()
    metrics = {
        "pixel_acc": 0.9,
        "mean_acc": 0.8,
        "miou": 0.7,
        "fwiou": 0.85,
        "iou_per_class": [0.7] * len(names),
    }

    def block(mode: str, loggers: Loggers, ema: torch.optim.swa_utils.AveragedModel | None) -> float:
        tic = time.perf_counter()
        for i in range(1, args.steps + 1):
            optimizer.zero_grad(set_to_none=True)
            loss, _ = criterion(model(images), masks)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            if loggers and i % args.log_interval == 0:
                step = block.count * args.steps + i  # steps increase across blocks, as in a run
                loggers.scalars(train_scalars({"loss": loss.item()}, 0.01, 10.0), step)
            if loggers and i == args.steps:
                loggers.scalars(val_scalars(metrics, names), step)
                loggers.checkpointed(step)
        block.count += 1
        return time.perf_counter() - tic

    block.count = 0  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as tmp:
        plugs: dict[str, tuple[Loggers, object]] = {}
        for mode in modes:
            loggers = Loggers([])
            if mode in LOGGERS:
                logger_cfg = train_config(compose_config([*overrides, f"logger=[{mode}]"]))
                run_dir = Path(tmp) / mode
                run_dir.mkdir()
                loggers = build_loggers(logger_cfg, run_dir, 0, is_main=True)
            ema = build_ema(model, 0.999, 0) if mode == "ema" else None
            plugs[mode] = (loggers, ema)
        block("plain", Loggers([]), None)  # warm-up
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode in modes:
                loggers, ema = plugs[mode]
                times[mode].append(block(mode, loggers, ema))  # type: ignore[arg-type]
        # The plug's own cost, timed apart (free of the step's noise): one EMA update, one log boundary
        # (train scalars, plus a validation's and a checkpoint's at every --log-interval-th boundary, as above).
        own_ms: dict[str, float] = {}
        for mode in modes[1:]:
            loggers, ema = plugs[mode]
            tic, reps = time.perf_counter(), 20
            for r in range(reps):
                if ema is not None:
                    ema.update_parameters(model)  # type: ignore[attr-defined]
                if loggers:
                    step = 10**6 + r
                    loggers.scalars(train_scalars({"loss": 1.0}, 0.01, 10.0), step)
                    loggers.scalars(val_scalars(metrics, names), step)
                    loggers.checkpointed(step)
            own_ms[mode] = 1000 * (time.perf_counter() - tic) / reps
        for loggers, _ in plugs.values():
            loggers.close()

    print(
        f"DeepLabv3+ {args.backbone}, batch {args.batch}, crop {args.crop}, {torch.get_num_threads()} thread(s); "
        f"{args.rounds} round(s) of {args.steps} steps per mode, a log every {args.log_interval} steps"
    )
    plain = times["plain"]
    plain_ms = 1000 * statistics.median(plain) / args.steps
    ratios, shares = {}, {}
    for mode in modes:
        per_round = [t / p for t, p in zip(times[mode], plain)]
        ratios[mode] = statistics.median(per_round)
        step_ms = 1000 * statistics.median(times[mode]) / args.steps
        line = (
            f"{mode:<12} step {step_ms:8.1f} ms   {mode}/plain {ratios[mode]:.3f} ({ratios[mode] - 1:+.1%})"
        )
        if mode in own_ms:
            # EMA runs every step; a logger once per --log-interval steps
            per_step = own_ms[mode] if mode == "ema" else own_ms[mode] / args.log_interval
            shares[mode] = per_step / plain_ms
            line += f"   own cost {own_ms[mode]:7.2f} ms per {'step' if mode == 'ema' else 'log'}"
            line += f" = {shares[mode]:.2%} of the plain step"
        print(line)
    print("target: each plug point adds at most 3% to the step time")
    return {"times": times, "ratios": ratios, "own_ms": own_ms, "shares": shares}


if __name__ == "__main__":
    main()
