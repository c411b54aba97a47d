"""Pixel accuracy of a trained model with BatchNorm's running statistics (eval mode, what evaluate.py scores) against
the same weights with each batch's own statistics (train mode, on a copy), on the model's validation images.

    python benchmarks/batchnorm_statistics.py outputs/train/<run>/checkpoints/last.pt outputs/train/<run>
    python benchmarks/batchnorm_statistics.py CHECKPOINT ... --images 32 --batch 4 --dataset.root=../shared/data

A short run from random weights with BatchNorm momentum 0.01 (MobileNetV3, timm's TF EfficientNets) leaves the
running statistics near their initial values: last.pt (the training weights) scores far below its batch
statistics. trainer.precise_bn recomputes them before validating; best.pt holds that copy.
"""

from __future__ import annotations

import argparse
import copy

import torch

from deeplab.data import load_split
from deeplab.deploy.restore import dataset_with_overrides, load_trained_model


@torch.no_grad()
def pixel_accuracy(
    model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch: int, train: bool
) -> float:
    net = copy.deepcopy(model).train(train)
    right = total = 0
    for i in range(0, len(images), batch):
        pred = net(images[i : i + batch])["out"].argmax(1)
        truth = masks[i : i + batch]
        valid = truth != 255
        right += int((pred[valid] == truth[valid]).sum())
        total += int(valid.sum())
    return right / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="run folders, .pt files or model folders")
    parser.add_argument("--images", type=int, default=32, help="validation images (the first N)")
    parser.add_argument("--batch", type=int, default=4, help="images per batch in train mode")
    parser.add_argument(
        "--dataset.root", dest="root", default=None, help="where the model's dataset lies now"
    )
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        model, card = load_trained_model(checkpoint)
        section = dataset_with_overrides(card.dataset, {"root": args.root} if args.root else {})
        val = load_split(section, "val")
        n = min(args.images, len(val))
        items = [val[i] for i in range(n)]
        if len({tuple(image.shape) for image, _ in items}) != 1:
            raise SystemExit("the validation images differ in size; this script batches images of one size")
        mean = torch.tensor(section.mean).view(1, -1, 1, 1)
        std = torch.tensor(section.std).view(1, -1, 1, 1)
        images = (torch.stack([image for image, _ in items]).float() / 255 - mean) / std
        masks = torch.stack([mask for _, mask in items]).long()
        running = pixel_accuracy(model, images, masks, args.batch, train=False)
        batch = pixel_accuracy(model, images, masks, args.batch, train=True)
        print(
            f"{checkpoint}: pixel accuracy on {n} val images: {100 * running:.1f}% with the running statistics, "
            f"{100 * batch:.1f}% with batch statistics ({args.batch} images per batch)"
        )


if __name__ == "__main__":
    main()
