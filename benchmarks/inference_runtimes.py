"""CPU inference latency of the exported model: eager PyTorch fp32, torch.compile (when it runs on this
machine) and ONNX Runtime, timed in the same run, for DeepLabv3+ ResNet-50 (OS 16) and torchvision's
MobileNetV3-Large DeepLabv3 layout.

    python benchmarks/inference_runtimes.py [--size 513] [--rounds 5] [--models v3p_r50,mobilenet_v3] [--no-compile]

Batch 1, random weights (latency does not depend on them), eval mode. Each round runs every runtime in turn
(order rotated), a warm-up call first; the ratios are medians of per-round ratios, so a change of machine load
hits all runtimes alike. ONNX Runtime uses its default CPU settings (all cores) and the file deeplab.deploy.export
writes (its default TorchScript exporter; graph optimisation is ONNX Runtime's).
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

import torch
from common import compose_config, describe_machine, interleaved_rounds, median, paired_ratio

from deeplab.config import train_config
from deeplab.deploy.export import LogitsOnly, export_onnx, metadata
from deeplab.deploy.onnx_model import OnnxSegmenter
from deeplab.models import build_model

MODELS = {
    "v3p_r50": ["model=deeplabv3plus", "backbone=resnet50", "backbone.pretrained=false"],
    "mobilenet_v3": ["experiment=torchvision_deeplabv3_mobilenet_v3_large", "backbone.pretrained=false",
                     "model.aux_head=false"],
}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    print(describe_machine(device))
    results: dict[str, object] = {}
    for name in args.models.split(","):
        cfg = train_config(compose_config(MODELS[name]))
        torch.manual_seed(0)
        wrapper = LogitsOnly(build_model(cfg)).eval()
        x = torch.randn(1, 3, args.size, args.size)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(
                wrapper, torch.randn(2, 3, args.size, args.size), path, 18, metadata(cfg), "torchscript"
            )
            session = OnnxSegmenter(path, providers=["CPUExecutionProvider"])
            array = x.numpy()
            fns = {
                "eager": functools.partial(wrapper, x),
                "onnxruntime": functools.partial(session.logits, array),
            }
            if args.compile:
                try:
                    compiled = torch.compile(wrapper)
                    with torch.no_grad():
                        compiled(x)  # compile now, outside the timing
                    fns["compile"] = functools.partial(compiled, x)
                except Exception as e:  # no compiler toolchain, unsupported CPU, ...
                    print(f"{name}: torch.compile does not run here ({str(e).splitlines()[0][:120]})")
            with torch.no_grad():
                for fn in fns.values():
                    fn()  # warm-up
                seconds = interleaved_rounds(fns, args.rounds, 1, device)
        ms = {k: 1000 * median(v) for k, v in seconds.items()}
        ratios = {k: paired_ratio(seconds["eager"], v) for k, v in seconds.items() if k != "eager"}
        line = ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items())
        speedups = ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        print(f"{name} {args.size}x{args.size}, batch 1: {line}; speed-up over eager: {speedups}")
        results[name] = {"ms": ms, "speedup": ratios}
    return results


if __name__ == "__main__":
    main()
