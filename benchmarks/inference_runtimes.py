"""CPU inference, every runtime side by side in one run: eager PyTorch fp32 (and bf16 where the CPU computes it
natively), ONNX Runtime fp32 and INT8, OpenVINO fp32 (its default precision hint on this CPU: bf16 on AMX or
AVX512-BF16 machines, f32 elsewhere) and INT8 (NNCF), for DeepLabv3+ ResNet-50 (OS 16) and torchvision's
MobileNetV3-Large DeepLabv3 layout.

    python benchmarks/inference_runtimes.py [--size 513] [--rounds 3] [--models v3p_r50,mobilenet_v3]
        [--batch 8] [--checkpoint quickstart best.pt] [--camvid RUN_OR_CHECKPOINT --camvid-root ../shared/data]
        [--skip-speed] [--skip-accuracy]

Speed: batch 1 latency (ms) and batch --batch throughput (images/s) at --size, random weights, the INT8 files
calibrated on 4 random normalised images (speed does not depend on the values). The runtimes take turns in each
round (order rotated); the ratios against ONNX Runtime INT8 are medians of per-round ratios, so a change of
machine load hits all runtimes alike. Every runtime gets the same threads (torch's count).
Accuracy: the mIoU each runtime loses against eager fp32, scored by evaluate.py's function: on the quickstart
model (trained here, about 40 s, unless --checkpoint gives one) and, with --camvid, on a CamVid model. The files
are what `python -m deeplab.export format=onnx|onnx_int8|openvino|openvino_int8` writes (INT8 calibrated on
--calibration training images).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import compose_config, describe_machine, interleaved_rounds, median, paired_ratio
from quantization import MODELS, compose_config_named, int8_instructions, onnx_pair

from deeplab.deploy.export import export
from deeplab.deploy.onnx_model import OnnxSegmenter
from deeplab.deploy.openvino_export import convert, save_ir
from deeplab.deploy.openvino_model import OpenVinoSegmenter
from deeplab.runtime import cpu_has_bf16

REFERENCE = "onnxruntime_int8"


def runtimes(name: str, size: int, work: Path) -> dict[str, Callable[[np.ndarray], object]]:
    """runtime -> fn(images (B, C, H, W) float32) for the model `name` with random weights."""
    import openvino as ov

    from deeplab.deploy.openvino_export import nncf_quiet

    nncf = nncf_quiet()

    wrapper, meta, fp32, int8, calibration = onnx_pair(name, size, work)
    ir = work / f"{name}.xml"
    model = convert(fp32, meta)
    save_ir(model, ir)
    ir_int8 = work / f"{name}_int8.xml"
    save_ir(nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration)), ir_int8)
    ort = {
        k: OnnxSegmenter(p, providers=["CPUExecutionProvider"]) for k, p in (("fp32", fp32), ("int8", int8))
    }
    openvino = {"fp32": OpenVinoSegmenter(ir), "int8": OpenVinoSegmenter(ir_int8)}
    print(
        f"{name}: OpenVINO {ov.__version__} runs the fp32 IR at {openvino['fp32'].precision} (its default hint "
        f"here); files MB: ONNX fp32 {fp32.stat().st_size / 2**20:.1f}, ONNX int8 {int8.stat().st_size / 2**20:.1f}, "
        f"IR fp32 {ir.with_suffix('.bin').stat().st_size / 2**20:.1f}, IR int8 "
        f"{ir_int8.with_suffix('.bin').stat().st_size / 2**20:.1f}"
    )

    def eager(x: np.ndarray, dtype: torch.dtype | None = None) -> object:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            return wrapper(torch.from_numpy(x)).float()

    fns: dict[str, Callable[[np.ndarray], object]] = {"eager_fp32": eager}
    if cpu_has_bf16():
        fns["eager_bf16"] = functools.partial(eager, dtype=torch.bfloat16)
    fns |= {
        "onnxruntime_fp32": ort["fp32"].logits,
        "onnxruntime_int8": ort["int8"].logits,
        "openvino_fp32": openvino["fp32"].logits,
        "openvino_int8": openvino["int8"].logits,
    }
    return fns


def speed(name: str, size: int, batch: int, rounds: int, work: Path) -> dict[str, object]:
    fns = runtimes(name, size, work)
    gen = np.random.default_rng(1)
    results: dict[str, object] = {}
    for b in (1, batch):
        x = gen.standard_normal((b, 3, size, size), dtype=np.float32)
        calls = {k: functools.partial(fn, x) for k, fn in fns.items()}
        for call in calls.values():
            call()  # warm-up: OpenVINO and ONNX Runtime prepare kernels for a new shape on the first call
        seconds = interleaved_rounds(calls, rounds, 1, torch.device("cpu"))
        vs_reference = {k: paired_ratio(seconds[k], seconds[REFERENCE]) for k in calls}  # >1: slower
        if b == 1:
            figures = {k: 1000 * median(v) for k, v in seconds.items()}
            line = ", ".join(f"{k} {v:.0f} ms" for k, v in figures.items())
        else:
            figures = {k: b / median(v) for k, v in seconds.items()}
            line = ", ".join(f"{k} {v:.2f} img/s" for k, v in figures.items())
        faster = ", ".join(f"{k} {1 / v:.2f}x" for k, v in vs_reference.items() if k != REFERENCE)
        print(f"{name} {size}x{size}, batch {b}: {line}")
        print(f"    speed against {REFERENCE} (above 1: faster): {faster}")
        results[f"batch{b}"] = {
            "figures": figures,
            "speed_vs_ort_int8": {k: 1 / v for k, v in vs_reference.items()},
        }
    return results


def accuracy(
    checkpoint: Path, calibration: int, work: Path, overrides: list[str], label: str
) -> dict[str, float]:
    """mIoU (points) of one model on every runtime, scored by evaluate.py's function."""
    from deeplab.deploy.evaluate import evaluate_checkpoint

    sources: dict[str, tuple[Path, str]] = {"eager_fp32": (checkpoint, "off")}
    if cpu_has_bf16():
        sources["eager_bf16"] = (checkpoint, "bf16")
    for fmt, suffix in (
        ("onnx", ".onnx"),
        ("onnx_int8", ".onnx"),
        ("openvino", ".xml"),
        ("openvino_int8", ".xml"),
    ):
        path = work / f"{label}_{fmt}{suffix}"
        cfg = compose_config_named(
            "export",
            [f"checkpoint={checkpoint}", f"output={path}", f"format={fmt}", f"calibration={calibration}"],
        )
        export(cfg, work)
        runtime = {"onnx": "onnxruntime_fp32", "onnx_int8": "onnxruntime_int8", "openvino": "openvino_fp32",
                   "openvino_int8": "openvino_int8"}[fmt]  # fmt: skip
        sources[runtime] = (path, "auto")  # auto: OpenVINO's default precision hint, ONNX Runtime's fp32
    scores = {}
    for runtime, (path, amp) in sources.items():
        metrics = evaluate_checkpoint(
            compose_config_named(
                "evaluate", [f"checkpoint={path}", "num_workers=0", f"amp={amp}", *overrides]
            ),
            work / f"eval_{label}_{runtime}",
        )
        scores[runtime] = 100 * float(metrics["miou"])
    base = scores["eager_fp32"]
    print(f"{label} mIoU: " + ", ".join(f"{k} {v:.2f} ({v - base:+.2f})" for k, v in scores.items()))
    return scores


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="the quickstart model (default: train it)"
    )
    parser.add_argument("--camvid", type=Path, default=None, help="a CamVid model (run folder or checkpoint)")
    parser.add_argument("--camvid-root", default=None, help="dataset.root of the CamVid model's data")
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep the files here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    print(describe_machine(torch.device("cpu")))
    print(int8_instructions() + f"; native bf16: {cpu_has_bf16()}")
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="deeplab-runtimes-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_speed:
            for name in args.models.split(","):
                results[name] = speed(name, args.size, args.batch, args.rounds, work)
        if not args.skip_accuracy:
            checkpoint = args.checkpoint
            if checkpoint is None:
                from deeplab.train.engine import train

                train(
                    compose_config(["experiment=quickstart", f"paths.data_dir={work / 'data'}"]),
                    work / "quickstart",
                )
                checkpoint = work / "quickstart" / "checkpoints" / "best.pt"
            results["quickstart"] = accuracy(checkpoint, args.calibration, work, [], "quickstart")
            if args.camvid is not None:
                overrides = [f"dataset.root={args.camvid_root}"] if args.camvid_root else []
                results["camvid"] = accuracy(args.camvid, args.calibration, work, overrides, "camvid")
    return results


if __name__ == "__main__":
    main()
