"""The CPU training step at CamVid's size: what trainer.amp=auto and trainer.channels_last=auto choose on the CPU at
hand, against the float32 contiguous step (the CPU default before auto chose bf16), as ratios from one run.

One step is the engine's: a batch of uint8 480x360 images normalised, forward under autocast, cross-entropy
(ignore 255), backward, SGD with momentum. Settings, each a Runtime as the engine builds it:

    fp32        float32, contiguous (the reference)
    fp32+cl     float32, channels_last
    bf16        bf16 autocast, contiguous, every convolution in bf16
    bf16+cl     bf16 autocast, channels_last, every convolution in bf16
    auto        what trainer.amp=auto trainer.channels_last=auto resolve to here (on a CPU with AVX512-BF16 or
                AMX: bf16 + channels_last with the depthwise convolutions trained in float32)

    python benchmarks/cpu_train_step.py                                   # every encoder, batch 4 at 480x360
    python benchmarks/cpu_train_step.py --encoders efficientnet_lite0 --batch 8 --rounds 5

Encoders (DeepLabv3+, output stride 16, random weights, no auxiliary head): resnet18, mobilenet_v3_large,
efficientnet_lite0 (timm's tf_efficientnet_lite0, TF "same" padding computed at run time) and
efficientnet_lite0_sym (timm's efficientnet_lite0, symmetric padding; the same weights load into both).
Each setting's models take turns for --rounds rounds of --iters steps; a ratio is the median of the per-round
ratios fp32 / setting (above 1: faster than fp32), so a change of load during the run does not bias it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import compose_config, cpu_model, describe_machine, interleaved_rounds, median, paired_ratio

from deeplab.config import train_config
from deeplab.models import build_model
from deeplab.runtime import Runtime, cpu_has_bf16, depthwise_in_float32, make_runtime

ENCODERS = {
    "resnet18": ["backbone=resnet18"],
    "mobilenet_v3_large": ["backbone=mobilenet_v3_large"],
    "efficientnet_lite0": ["backbone=efficientnet_lite0"],
    "efficientnet_lite0_sym": ["backbone=timm", "backbone.model=efficientnet_lite0"],
}
SETTINGS = ("fp32", "fp32+cl", "bf16", "bf16+cl", "auto")
NUM_CLASSES = 11


def runtime_of(setting: str) -> Runtime:
    if setting == "auto":
        return make_runtime("cpu", "auto", "auto")
    amp = "bf16" if setting.startswith("bf16") else "off"
    return make_runtime("cpu", amp, setting.endswith("+cl"))


def make_step(encoder: str, setting: str, batch: int, height: int, width: int) -> Callable[[], None]:
    overrides = ["dataset=camvid", "backbone.pretrained=false", "model.aux_head=false", *ENCODERS[encoder]]
    torch.manual_seed(0)
    model = build_model(train_config(compose_config(overrides)))
    rt = runtime_of(setting)
    model.to(rt.device)
    if setting == "auto" and rt.device.type == "cpu" and rt.amp_dtype == torch.bfloat16:
        depthwise_in_float32(model)
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    normalize = rt.normalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=gen)
    masks = torch.randint(0, NUM_CLASSES, (batch, height, width), generator=gen)

    def step() -> None:
        with rt.autocast():
            logits = model(normalize(images))["out"]
        loss = F.cross_entropy(logits.float(), masks, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--encoders", default=",".join(ENCODERS), help=f"comma-separated: {', '.join(ENCODERS)}"
    )
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", default="480x360", help="WIDTHxHEIGHT of the batch (CamVid's 480x360)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    settings = [s for s in args.settings.split(",") if s]
    if "fp32" not in settings:
        settings.insert(0, "fp32")
    auto = make_runtime("cpu", "auto", "auto")
    print(describe_machine(torch.device("cpu")))
    flags = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in _cpu_flags()]
    print(
        f"CPU {cpu_model()}; flags {' '.join(flags) or 'none of avx2/avx512'}; native bf16: {cpu_has_bf16()}"
    )
    print(f"auto here: amp {auto.amp_dtype}, channels_last {auto.channels_last}")
    print(
        f"DeepLabv3+ OS 16, batch {args.batch} at {width}x{height}, {NUM_CLASSES} classes; s per step (median)"
    )
    print(f"| encoder | {' | '.join(settings)} | " + " | ".join(f"fp32 / {s}" for s in settings[1:]) + " |")
    print("|---" * (2 * len(settings)) + "|")
    for encoder in (e for e in args.encoders.split(",") if e):
        steps = {s: make_step(encoder, s, args.batch, height, width) for s in settings}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        seconds = interleaved_rounds(steps, args.rounds, args.iters, torch.device("cpu"))
        times = " | ".join(f"{median(seconds[s]):.2f}" for s in settings)
        ratios = " | ".join(f"{paired_ratio(seconds['fp32'], seconds[s]):.2f}x" for s in settings[1:])
        print(f"| {encoder} | {times} | {ratios} |", flush=True)


def _cpu_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())


if __name__ == "__main__":
    main()
