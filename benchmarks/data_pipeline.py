"""Train data pipeline throughput: decode JPEG + PNG, random scale, pad, crop, flip, to tensor, normalise.

Compares this project's pipeline (deeplab.data: PIL decode + albumentations/OpenCV augmentation) with a plain
torchvision/PIL pipeline doing the same steps, in one process on one core (what one DataLoader worker
does), on generated VOC-sized images. Prints images/s of both and the ratio.

    python benchmarks/data_pipeline.py [--num-images 200] [--crop-size 513] [--size 500x375] [--passes 3]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from deeplab.config.labels import voc_colormap
from deeplab.data.dataset import Sample, SegmentationDataset
from deeplab.data.synthetic import SyntheticSpec, render
from deeplab.data.transforms import train_transform

SCALE = (0.5, 2.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_images(folder: Path, count: int, width: int, height: int) -> list[Sample]:
    """VOC-like files: JPEG photos (quality 90) of textured shapes on clutter, palette PNG masks."""
    spec = SyntheticSpec(image_size=(height, width), num_train=count)
    palette = voc_colormap().reshape(-1).tolist()
    samples = []
    for i in range(count):
        image, label = render(spec, "train", i)
        Image.fromarray(image).save(folder / f"{i}.jpg", quality=90)
        mask = Image.fromarray(label, mode="P")
        mask.putpalette(palette)
        mask.save(folder / f"{i}.png")
        samples.append(Sample(str(i), folder / f"{i}.jpg", folder / f"{i}.png"))
    return samples


class PlainPipeline:
    """The same steps with PIL and torchvision.transforms.functional, as in torchvision's reference scripts
    (float normalised), or with uint8 out as this project's pipeline (which normalises on the device)."""

    def __init__(self, samples: list[Sample], crop_size: int, normalize: bool = True) -> None:
        self.samples = samples
        self.crop = crop_size
        self.normalize = normalize
        self.fill = tuple(round(m * 255) for m in IMAGENET_MEAN)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = Image.open(sample.image).convert("RGB")
        mask = Image.open(sample.mask)
        s = random.uniform(*SCALE)
        size = [int(image.height * s), int(image.width * s)]
        image = TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR)
        mask = TF.resize(mask, size, interpolation=TF.InterpolationMode.NEAREST)
        pad_h, pad_w = max(self.crop - size[0], 0), max(self.crop - size[1], 0)
        if pad_h or pad_w:
            image = TF.pad(image, [0, 0, pad_w, pad_h], fill=self.fill)
            mask = TF.pad(mask, [0, 0, pad_w, pad_h], fill=255)
        top = random.randint(0, image.height - self.crop)
        left = random.randint(0, image.width - self.crop)
        image = TF.crop(image, top, left, self.crop, self.crop)
        mask = TF.crop(mask, top, left, self.crop, self.crop)
        if random.random() < 0.5:
            image, mask = TF.hflip(image), TF.hflip(mask)
        if not self.normalize:
            return TF.pil_to_tensor(image), torch.as_tensor(np.array(mask), dtype=torch.uint8)
        tensor = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
        return tensor, torch.as_tensor(np.array(mask), dtype=torch.int64)


def one_pass(dataset) -> float:
    """Images per second of one loop through the dataset."""
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def rates(pipelines: dict, passes: int) -> dict[str, float]:
    """Best images/s of each pipeline over `passes` loops, taken in turns so load changes hit all alike."""
    for dataset in pipelines.values():
        dataset[0]  # warm-up
    best = dict.fromkeys(pipelines, 0.0)
    for _ in range(passes):
        for name, dataset in pipelines.items():
            best[name] = max(best[name], one_pass(dataset))
    return best


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--crop-size", type=int, default=513)
    parser.add_argument("--size", default="500x375", help="width x height of the generated images")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))

    # One core, as in one DataLoader worker (which also runs torch with one thread).
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    random.seed(0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        samples = make_images(Path(tmp), args.num_images, width, height)
        transform = train_transform(args.crop_size, SCALE, hflip=True, mean=IMAGENET_MEAN)
        pipelines = {
            "deeplab": SegmentationDataset(samples, 21, transform=transform),
            "torchvision_pil": PlainPipeline(samples, args.crop_size),
            "torchvision_pil_uint8": PlainPipeline(samples, args.crop_size, normalize=False),
        }
        results = rates(pipelines, args.passes)
    results["ratio"] = results["deeplab"] / results["torchvision_pil"]
    results["ratio_uint8"] = results["deeplab"] / results["torchvision_pil_uint8"]
    print(
        f"train pipeline, {args.num_images} images {width}x{height}, crop {args.crop_size}, scale {SCALE}, "
        f"one process, one thread, best of {args.passes} passes"
    )
    print(f"  deeplab (albumentations), uint8 out:        {results['deeplab']:8.1f} images/s")
    print(f"  torchvision/PIL, float normalised:          {results['torchvision_pil']:8.1f} images/s")
    print(f"  torchvision/PIL, uint8 out:                 {results['torchvision_pil_uint8']:8.1f} images/s")
    print(
        f"  ratio deeplab / torchvision: {results['ratio']:.2f}x (against its uint8 variant: "
        f"{results['ratio_uint8']:.2f}x)"
    )
    return results


if __name__ == "__main__":
    main()
