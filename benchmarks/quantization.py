"""INT8 on the CPU: what ONNX Runtime's static quantisation (deeplab.export format=onnx_int8) costs in
accuracy and gains in latency, measured side by side in one run.

    python benchmarks/quantization.py [--checkpoint best.pt] [--calibration 32] [--size 513] [--rounds 5]
                                      [--models v3p_r50,mobilenet_v3] [--skip-accuracy] [--skip-latency]

Accuracy: the quickstart model (trained here, about 30 s, unless --checkpoint gives one) exported in fp32 and
in int8 (calibrated on --calibration training images) by `python -m deeplab.export`, both scored by
`evaluate.py` on the validation set; the difference in mIoU points.
Latency: batch 1 at --size for v3+ ResNet-50 (OS 16) and torchvision's MobileNetV3-Large DeepLabv3 layout,
random weights, int8 calibrated on 4 random normalised images (latency does not depend on the values);
ONNX Runtime int8, ONNX Runtime fp32 and eager PyTorch take turns in each round (order rotated), and the
ratios are medians of per-round ratios. The CPU's integer dot-product instructions (AVX-512 VNNI, AVX-VNNI,
AMX) decide how much int8 gains: they are printed first.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import compose_config, describe_machine, interleaved_rounds, median, paired_ratio

from deeplab.config import train_config
from deeplab.deploy.export import LogitsOnly, export, export_onnx, metadata
from deeplab.deploy.onnx_model import OnnxSegmenter
from deeplab.deploy.quantize import quantize_int8
from deeplab.models import build_model

MODELS = {
    "v3p_r50": ["model=deeplabv3plus", "backbone=resnet50", "backbone.pretrained=false"],
    "mobilenet_v3": ["experiment=torchvision_deeplabv3_mobilenet_v3_large", "backbone.pretrained=false",
                     "model.aux_head=false"],
}  # fmt: skip


def int8_instructions() -> str:
    """The CPU flags that give int8 its speed (x86 Linux), or what is missing."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
    except (OSError, IndexError):
        return "CPU flags unknown"
    found = [f for f in ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    note = "" if vnni else " (no VNNI: int8 dot products take three instructions, and MLAS avoids overflow)"
    return f"int8 instructions: {', '.join(found) or 'none'}{note}"


def accuracy(checkpoint: Path | None, calibration: int, work: Path) -> dict[str, float]:
    """mIoU (points) of the quickstart model in fp32 and int8 ONNX, scored by evaluate.py's function."""
    from deeplab.deploy.evaluate import evaluate_checkpoint
    from deeplab.train.engine import train

    if checkpoint is None:
        cfg = compose_config(["experiment=quickstart", f"paths.data_dir={work / 'data'}"])
        train(cfg, work / "quickstart")
        checkpoint = work / "quickstart" / "checkpoints" / "best.pt"
    scores = {}
    for fmt in ("onnx", "onnx_int8"):
        path = work / f"{fmt}.onnx"
        export(
            compose_config_named("export", [f"checkpoint={checkpoint}", f"output={path}", f"format={fmt}",
                                            f"calibration={calibration}"]),
            work,
        )  # fmt: skip
        metrics = evaluate_checkpoint(
            compose_config_named("evaluate", [f"checkpoint={path}", "num_workers=0"]), work / f"eval_{fmt}"
        )
        scores[fmt] = 100 * float(metrics["miou"])
    print(
        f"quickstart mIoU: fp32 {scores['onnx']:.2f}, int8 {scores['onnx_int8']:.2f} "
        f"({scores['onnx_int8'] - scores['onnx']:+.2f} points; target: at most 1.0 lost)"
    )
    return scores


def compose_config_named(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from deeplab.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def onnx_pair(
    name: str, size: int, work: Path
) -> tuple[LogitsOnly, dict[str, object], Path, Path, list[np.ndarray]]:
    """MODELS[name] with random weights: (the model, its metadata, its fp32 ONNX file, the ONNX Runtime INT8 file,
    the 4 random normalised images that calibrated it; speed does not depend on the values)."""
    cfg = train_config(compose_config(MODELS[name]))
    torch.manual_seed(0)
    wrapper = LogitsOnly(build_model(cfg)).eval()
    fp32, int8 = work / f"{name}.onnx", work / f"{name}_int8.onnx"
    export_onnx(wrapper, torch.randn(2, 3, size, size), fp32, 18, metadata(cfg), "torchscript")
    gen = np.random.default_rng(0)
    calibration = [gen.standard_normal((1, 3, size, size), dtype=np.float32) for _ in range(4)]
    quantize_int8(fp32, int8, iter(calibration))
    return wrapper, metadata(cfg), fp32, int8, calibration


def latency(name: str, size: int, rounds: int, work: Path) -> dict[str, object]:
    wrapper, _, fp32, int8, _ = onnx_pair(name, size, work)
    x = torch.randn(1, 3, size, size)
    sessions = {
        k: OnnxSegmenter(p, providers=["CPUExecutionProvider"]) for k, p in (("fp32", fp32), ("int8", int8))
    }
    fns = {
        "eager": functools.partial(wrapper, x),
        "onnxruntime_fp32": functools.partial(sessions["fp32"].logits, x.numpy()),
        "onnxruntime_int8": functools.partial(sessions["int8"].logits, x.numpy()),
    }
    device = torch.device("cpu")
    with torch.no_grad():
        for fn in fns.values():
            fn()  # warm-up
        seconds = interleaved_rounds(fns, rounds, 1, device)
    ms = {k: 1000 * median(v) for k, v in seconds.items()}
    int8_vs_fp32 = paired_ratio(seconds["onnxruntime_fp32"], seconds["onnxruntime_int8"])
    int8_vs_eager = paired_ratio(seconds["eager"], seconds["onnxruntime_int8"])
    line = ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items())
    print(
        f"{name} {size}x{size}, batch 1: {line}; int8 is {int8_vs_fp32:.2f}x ONNX Runtime fp32, "
        f"{int8_vs_eager:.2f}x eager (MB: fp32 {fp32.stat().st_size / 2**20:.1f}, int8 {int8.stat().st_size / 2**20:.1f})"
    )
    return {"ms": ms, "int8_vs_fp32": int8_vs_fp32, "int8_vs_eager": int8_vs_eager}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep the files here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    print(describe_machine(torch.device("cpu")))
    print(int8_instructions())
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="deeplab-quant-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_accuracy:
            results["miou"] = accuracy(args.checkpoint, args.calibration, work)
        if not args.skip_latency:
            for name in args.models.split(","):
                results[name] = latency(name, args.size, args.rounds, work)
    return results


if __name__ == "__main__":
    main()
