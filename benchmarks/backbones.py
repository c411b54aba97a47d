"""Every backbone: parameters, multiply-adds and CPU latency at 513x513, next to the published figures; and our
MobileNetV3 DeepLab against torchvision's deeplabv3_mobilenet_v3_large, timed in the same run.

    python benchmarks/backbones.py [--size 513] [--backbones all] [--runs 3] [--rounds 7] [--threads N]

MACs = FLOPs / 2 from torch.utils.flop_counter.FlopCounterMode on the meta device (convolutions and matrix
products; BatchNorm, activations, pooling and resizing add well under 1%). Latency: eval mode, batch 1, fp32,
median of --runs forwards after a warm-up. The ratio pairs rounds in which ours and torchvision's take turns
(order rotated), so a change of machine load hits both alike; below 1.0 ours is faster.

Published figures: DeepLabv3+ paper Table 3 (ResNet-101, OS 16: v3 81.02, v3+ 101.28 GMACs); VainF's
DeepLabV3Plus-MobileNet (MobileNetV2, OS 16: 17.0 "GFLOPs", 5.8M parameters); TF DeepLab model zoo
(mobilenetv2_coco_voc_trainaug, without ASPP and decoder, OS 16: 2.75B multiply-adds; xception65_coco_voc_trainaug,
v3+, OS 16: 54.17B).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import compose_config, describe_machine, interleaved_rounds, paired_ratio
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

from deeplab.models import build_model

BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "xception65",
)
RECIPES = {  # experiments with published figures -> (GMACs, source)
    "voc_aug_deeplabv3plus_xception65_os16": (54.17, "TF zoo xception65, separable ASPP and decoder"),
    "voc_aug_deeplabv3plus_mobilenet_v2_os16": (17.0, "VainF: one 3x3 conv in its decoder, the paper two"),
}
PUBLISHED = {  # (head, backbone, output stride) -> (GMACs, source)
    ("deeplabv3", "resnet101", 16): (81.02, "v3+ paper"),
    ("deeplabv3plus", "resnet101", 16): (101.28, "v3+ paper"),
    ("deeplabv3plus", "mobilenet_v2", 16): (17.0, "VainF"),
    ("deeplabv3", "mobilenet_v2", 16): (2.75, "TF zoo, no ASPP"),
    ("deeplabv3plus", "xception65", 16): (54.17, "TF zoo"),
}


def ours(*overrides: str, device: str = "cpu") -> nn.Module:
    cfg = compose_config(["backbone.pretrained=false", "model.aux_head=false", *overrides])
    with torch.device(device):
        return build_model(cfg).eval()


def gmacs(model: nn.Module, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / 2 / 1e9


def latency_ms(model: nn.Module, size: int, runs: int) -> float:
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        model(x)  # warm-up: oneDNN picks its kernels
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def mobilenet_ratio(size: int, rounds: int) -> dict[str, float]:
    """Our experiment=torchvision_deeplabv3_mobilenet_v3_large vs torchvision's model, eval, batch 1."""
    torch.manual_seed(0)
    theirs = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=False).eval()
    mine = ours("experiment=torchvision_deeplabv3_mobilenet_v3_large")
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        for m in (theirs, mine):
            m(x)  # warm-up
        seconds = interleaved_rounds(
            {"ours": lambda: mine(x), "torchvision": lambda: theirs(x)}, rounds, 1, torch.device("cpu")
        )
    ratio = paired_ratio(seconds["ours"], seconds["torchvision"])
    return {
        "ours_ms": 1000 * statistics.median(seconds["ours"]),
        "torchvision_ms": 1000 * statistics.median(seconds["torchvision"]),
        "ratio": ratio,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--backbones", default="all", help=f"comma-separated: {', '.join(BACKBONES)}")
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per model (0: no latency)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the MobileNetV3 ratio")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = BACKBONES if args.backbones == "all" else tuple(args.backbones.split(","))
    print(describe_machine(torch.device("cpu")))
    header = f"{'model':<34} {'OS':>3} {'params (M)':>10} {'GMACs':>8} {'CPU ms':>8}   published GMACs"
    print(header)
    print("-" * (len(header) + 10))
    rows = []
    for backbone in names:
        for head in ("deeplabv3", "deeplabv3plus"):
            for output_stride in (16, 8):
                overrides = [
                    f"backbone={backbone}",
                    f"model={head}",
                    f"backbone.output_stride={output_stride}",
                ]
                params = sum(p.numel() for p in ours(*overrides, device="meta").parameters()) / 1e6
                macs = gmacs(ours(*overrides, device="meta"), args.size)
                ms = latency_ms(ours(*overrides), args.size, args.runs) if args.runs else float("nan")
                published = PUBLISHED.get((head, backbone, output_stride))
                pub = f"{published[0]:.2f} ({published[1]})" if published else "-"
                print(
                    f"{head + ' ' + backbone:<34} {output_stride:>3} {params:>10.2f} {macs:>8.2f} {ms:>8.0f}   {pub}"
                )
                rows.append({"model": f"{head} {backbone}", "os": output_stride, "params_m": params, "gmacs": macs,
                             "cpu_ms": ms})  # fmt: skip
    for experiment, (published, source) in RECIPES.items():
        if not any(b in experiment for b in names):
            continue
        model = ours(f"experiment={experiment}", device="meta")
        params, macs = sum(p.numel() for p in model.parameters()) / 1e6, gmacs(model, args.size)
        print(
            f"experiment={experiment}: {params:.2f}M parameters, {macs:.2f} GMACs; published {published} ({source})"
        )
        rows.append(
            {"model": experiment, "os": 16, "params_m": params, "gmacs": macs, "cpu_ms": float("nan")}
        )
    ratio = mobilenet_ratio(args.size, args.rounds)
    print(
        f"MobileNetV3 DeepLabv3 (torchvision's architecture), batch 1, {args.size}x{args.size}: ours "
        f"{ratio['ours_ms']:.0f} ms, torchvision {ratio['torchvision_ms']:.0f} ms; "
        f"ratio ours/torchvision {ratio['ratio']:.3f} (median of {args.rounds} paired rounds)"
    )
    return {"rows": rows, "mobilenet": ratio}


if __name__ == "__main__":
    main()
