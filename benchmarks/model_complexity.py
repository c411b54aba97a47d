"""Parameters and multiply-adds of the DeepLab models next to the published figures.

    python benchmarks/model_complexity.py [--size 513]

MACs = FLOPs / 2 from torch.utils.flop_counter.FlopCounterMode, which counts convolutions and matrix
products (BatchNorm, ReLU, pooling and bilinear resizing are not counted; they add well under 1%).
The models run on PyTorch's "meta" device: shapes only, no arithmetic, so the table takes seconds.

torchvision's weights meta "_ops" (documented as GFLOPS) counts multiply-adds: resnet50 gives 4.09 here
as in its meta. The DeepLabv3+ paper's ResNet-101 is TF-slim's resnet_v1_101 with DeepLab's stem of three
3x3 convs (64, 64, 128 channels) instead of one 7x7 conv, about 7 GMACs more at 513x513.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, deeplabv3_resnet50

from deeplab.config.compose import compose_train_config
from deeplab.models import build_model

# DeepLabv3+ paper (arXiv 1802.02611) Table 3, ResNet-101 at 513x513, eval output stride 16.
PAPER_GMACS = {("deeplabv3", "resnet101", 16): 81.02, ("deeplabv3plus", "resnet101", 16): 101.28}


def measure(model: nn.Module, size: int, train: bool = False) -> tuple[float, float]:
    """(millions of parameters, GMACs per 3xSxS image of a forward; eval mode unless `train`)."""
    params = sum(p.numel() for p in model.parameters()) / 1e6
    batch = 2 if train else 1  # training BatchNorm needs more than one value per channel after image pooling
    model.train(train)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(batch, 3, size, size, device="meta"))
    return params, counter.get_total_flops() / 2 / 1e9 / batch


def ours(overrides: list[str]) -> nn.Module:
    cfg = compose_train_config(["backbone.pretrained=false", *overrides])
    with torch.device("meta"):
        return build_model(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=513, help="input side for our models (the papers use 513)"
    )
    parser.add_argument("--tv-size", type=int, default=520, help="input side for torchvision's models")
    args = parser.parse_args()

    rows = []
    for model_name in ("deeplabv3", "deeplabv3plus"):
        for backbone in ("resnet50", "resnet101"):
            for os in (16, 8):
                model = ours(
                    [
                        f"model={model_name}",
                        f"backbone={backbone}",
                        f"backbone.output_stride={os}",
                        "backbone.multi_grid=[1,2,4]",
                        "dataset.num_classes=21",
                        "model.aux_head=false",
                    ]
                )
                params, gmacs = measure(model, args.size)
                paper = PAPER_GMACS.get((model_name, backbone, os))
                rows.append((f"ours {model_name} {backbone} OS {os}", args.size, params, gmacs, None, paper))

    tv_meta = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta
    with torch.device("meta"):
        tv = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    params, gmacs = measure(tv, args.tv_size)  # torchvision computes the aux head in eval mode too
    rows.append(
        (
            "torchvision deeplabv3_resnet50 (eval, runs aux too)",
            args.tv_size,
            params,
            gmacs,
            tv_meta["num_params"] / 1e6,
            tv_meta["_ops"],
        )
    )
    model = ours(["experiment=torchvision_deeplabv3_r50"])
    for train in (False, True):  # ours runs the aux head only in training mode
        params, gmacs = measure(model, args.tv_size, train)
        name = f"ours experiment=torchvision_deeplabv3_r50 ({'train, aux' if train else 'eval, no aux'})"
        rows.append(
            (
                name,
                args.tv_size,
                params,
                gmacs,
                tv_meta["num_params"] / 1e6,
                tv_meta["_ops"] if train else None,
            )
        )
    # torchvision's "_ops" field (documented as GFLOPS) compared on the classifier it is best known for.
    with torch.device("meta"):
        r50 = resnet50()
    params, gmacs = measure(r50, 224)
    r50_meta = ResNet50_Weights.IMAGENET1K_V2.meta
    rows.append(
        (
            "torchvision resnet50 (classifier)",
            224,
            params,
            gmacs,
            r50_meta["num_params"] / 1e6,
            r50_meta["_ops"],
        )
    )

    header = f"{'model':<58} {'input':>5} {'params (M)':>11} {'GMACs':>8} {'pub. params':>12} {'pub. GMACs/_ops':>16}"
    print(header)
    print("-" * len(header))
    for name, size, params, gmacs, pub_params, pub_gmacs in rows:
        pp = f"{pub_params:.2f}" if pub_params is not None else "-"
        pg = f"{pub_gmacs:.2f}" if pub_gmacs is not None else "-"
        print(f"{name:<58} {size:>5} {params:>11.2f} {gmacs:>8.2f} {pp:>12} {pg:>16}")


if __name__ == "__main__":
    main()
