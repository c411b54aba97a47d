"""Shared pieces of the benchmarks: config composition, timing in interleaved rounds, the device's matmul
peak, a description of the machine, and generated VOC-sized data in the VOC layout.

The benchmark scripts import this file as `common` (Python puts the script's folder on sys.path).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from deeplab.config import SHAPES
from deeplab.config.compose import compose_train_config
from deeplab.config.labels import voc_colormap
from deeplab.data.synthetic import SyntheticSpec, render
from deeplab.errors import UserError
from deeplab.runtime import resolve_device as engine_resolve_device

# Typical Pascal VOC image sizes (width x height): the long side is 500, the short side varies.
VOC_SIZES = ((500, 375), (375, 500), (500, 333), (500, 500), (333, 500), (500, 281))


# ----------------------------------------------------------------------------- config and arguments


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The project's train config (configs/train.yaml) with overrides, as train.py composes it."""
    return compose_train_config(list(overrides))


HEADS = {"v3": "deeplabv3", "v3p": "deeplabv3plus"}
BACKBONES = {"r50": "resnet50", "r101": "resnet101"}
OUR_MODELS = [f"{h}_{b}_{o}" for h in HEADS for b in BACKBONES for o in ("os16", "os8")] + [
    "tvlike_r50",
    "tvlike_r101",
]
MODEL_HELP = (
    "v3|v3p _ r50|r101 _ os16|os8 (e.g. v3p_r101_os16: the paper recipe, multi-grid 1,2,4, ASPP 6,12,18 "
    "doubled at OS 8) or tvlike_r50|tvlike_r101 (torchvision's deeplabv3 layout: OS 8, torchvision dilation, "
    "ASPP 12,24,36, dropout 0.5, extra 3x3 head conv)"
)


def model_overrides(name: str) -> list[str]:
    """Config overrides that describe one of the named models (random weights, no auxiliary head)."""
    if name in ("tvlike_r50", "tvlike_r101"):
        return [
            "backbone.pretrained=false",
            f"experiment=torchvision_deeplabv3_{name[7:]}",
            "model.aux_head=false",
        ]
    parts = name.split("_")
    if (
        len(parts) != 3
        or parts[0] not in HEADS
        or parts[1] not in BACKBONES
        or parts[2] not in ("os16", "os8")
    ):
        raise SystemExit(f"unknown model {name!r}; use {MODEL_HELP}")
    return [
        "backbone.pretrained=false",
        f"model={HEADS[parts[0]]}",
        f"backbone={BACKBONES[parts[1]]}",
        f"backbone.output_stride={parts[2][2:]}",
        "model.aux_head=false",
    ]


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when visible, else the CPU (the engine's rule); a bad name ends the script in one line."""
    try:
        return engine_resolve_device(name, key="--device")
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


def int_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]."""
    return [int(v) for v in text.split(",") if v.strip()]


def flag_arg(text: str) -> str | bool:
    """auto | true/on/yes/1 | false/off/no/0, as deeplab.runtime.resolve_flag takes it."""
    value = text.lower()
    if value == "auto":
        return "auto"
    if value in ("true", "on", "yes", "1"):
        return True
    if value in ("false", "off", "no", "0"):
        return False
    raise SystemExit(f"expected auto, true or false, got {text!r}")


def parse_size(text: str) -> tuple[int, int]:
    """'500x375' -> (500, 375) as (width, height)."""
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


# ----------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock time covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    """Seconds for `iters` calls of fn, with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_rounds(
    fns: dict[str, Callable[[], object]], rounds: int, iters: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of every fn in each round; the fns take turns (order rotated every round), so a
    change of machine load during the run hits all of them alike instead of biasing their ratio."""
    names = list(fns)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(timed(fns[name], iters, device) / iters)
    return seconds


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a[i] / b[i] (rates measured in the same round)."""
    return median([x / y for x, y in zip(a, b)])


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 1.0) -> float:
    """Dense matmul TFLOP/s of an (n, n) @ (n, n) product in dtype, best of a few timed batches.

    This is the measured peak that MFU is taken against (on an H100 a bf16 8192^3 product reaches most of
    the data-sheet figure; the data sheet's figure is not used).
    """
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.float32, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, dtype=torch.float32, generator=gen).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up: library initialisation and kernel choice
    one = timed(lambda: torch.matmul(a, b, out=out), 1, device)
    reps = max(1, min(200, int(seconds / 3 / max(one, 1e-6))))
    best = min(timed(lambda: torch.matmul(a, b, out=out), reps, device) / reps for _ in range(3))
    return 2.0 * n**3 / best / 1e12


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"{one:.1f} (1 min), {five:.1f} (5 min)"
    except OSError:
        return "unknown"


def describe_machine(device: torch.device) -> str:
    """One line naming the device, the CPU, the core count, the load and the library versions."""
    cpu = f"CPU {cpu_model()}, {usable_cores()} cores, load {load_average()}"
    versions = f"torch {torch.__version__}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
        return f"{gpu} | {cpu} | {versions}, cuDNN {torch.backends.cudnn.version()}"
    return f"{cpu} | {versions}, {torch.get_num_threads()} threads"


# ----------------------------------------------------------------------------- generated VOC-sized data

DATA_STAMP = "benchmark_data.json"


def write_voc_images(
    root: str | Path, num_train: int, num_val: int, sizes: Sequence[tuple[int, int]], seed: int = 0
) -> Path:
    """root/VOC2012 in the VOC layout (JPEGImages, palette PNG masks, ImageSets/Segmentation/{train,val}.txt)
    holding generated photos of the given (width, height) sizes, image i taking sizes[i % len(sizes)].

    The images are the project's synthetic scenes (textured shapes on cluttered backgrounds, labels 0-6 with
    a 255 boundary band) saved as JPEG quality 90 like typical photos. Written once: a folder holding the
    same set is reused, so a large set (1,449 images) can be kept with --data-dir.
    """
    root = Path(root).expanduser().absolute()
    stamp = {"num_train": num_train, "num_val": num_val, "sizes": [list(s) for s in sizes], "seed": seed}
    stamp_path = root / DATA_STAMP
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return root
    voc = root / "VOC2012"
    if voc.exists():
        if not stamp_path.is_file():
            raise SystemExit(f"{voc} exists and was not written by the benchmarks; give another --data-dir")
        shutil.rmtree(voc)  # a generated set of other sizes or counts
        stamp_path.unlink()
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_colormap().reshape(-1).tolist()
    for split, count in (("train", num_train), ("val", num_val)):
        ids = [f"{split}_{i:05d}" for i in range(count)]
        for i, image_id in enumerate(ids):
            width, height = sizes[i % len(sizes)]
            spec = SyntheticSpec(("background", *SHAPES), 1, 1, (height, width), seed)
            image, label = render(spec, split, i)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
            mask = Image.fromarray(label, mode="P")
            mask.putpalette(palette)
            mask.save(voc / "SegmentationClass" / f"{image_id}.png")
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    stamp_path.write_text(json.dumps(stamp))  # last: a half-written set has no stamp and is rewritten
    return root


def random_batch(
    batch: int, height: int, width: int, num_classes: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 image batch (B, 3, H, W) and int64 labels (B, H, W) with about 5% ignored (255) pixels,
    on the device, as the train loader delivers them."""
    gen = np.random.default_rng(seed)
    images = torch.from_numpy(gen.integers(0, 256, (batch, 3, height, width), dtype=np.uint8))
    labels = gen.integers(0, num_classes, (batch, height, width))
    labels[gen.random((batch, height, width)) < 0.05] = 255
    return images.to(device), torch.from_numpy(labels).to(device)
