"""A model exported by deeplab.deploy.export, run with ONNX Runtime, in the shape deeplab.models.inference expects:
model(x) -> {"out": logits}, with the class names, normalisation and colours read from the file's metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deeplab.deploy.graph import METADATA_KEY, GraphModel, check_ports, read_metadata
from deeplab.errors import ConfigError, ExportError, first_line

__all__ = ["METADATA_KEY", "OnnxSegmenter", "onnx_providers", "onnx_run_settings"]


class OnnxSegmenter(GraphModel):
    """ONNX Runtime session over a deeplab ONNX file (CPU, or CUDA when onnxruntime-gpu offers it)."""

    runtime = "ONNX"

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError('running an ONNX model needs onnxruntime: pip install -e ".[export]"') from None
        path = Path(path)
        if not path.is_file():
            raise ExportError(
                f"model {path} does not exist; export one with `python -m deeplab.export checkpoint=...`"
            )
        available = ort.get_available_providers()
        chosen = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), providers=chosen)
        except Exception as e:  # onnxruntime raises its own exception kinds for a bad file
            raise ExportError(f"cannot load model {path}: {first_line(e)}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ExportError(
                f"model {path} has no deeplab metadata (class names, normalisation); export it with "
                "`python -m deeplab.export`"
            )
        self.meta: dict[str, Any] = read_metadata(props[METADATA_KEY], path)
        check_against_graph(self.meta, self.session, path)
        self.path = path

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 normalised images -> (B, num_classes, H, W) float32 logits."""
        return self.session.run(["logits"], {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]


def onnx_run_settings(
    output_stride: int | None, amp: str, channels_last: str | bool, device: str
) -> list[Any] | None:
    """ONNX Runtime's providers for evaluate's and predict's settings; those the exported graph fixes (stride,
    precision, memory layout) are refused with one line."""
    for key, value, why in (
        ("eval.output_stride", output_stride, "export it at that stride with `python -m deeplab.export "
         "output_stride=N`"),
        ("amp", None if amp == "off" else amp, "the graph runs in the precision it was exported in"),
        ("channels_last", "true" if channels_last is True else None, "ONNX Runtime chooses its own memory layout"),
    ):  # fmt: skip
        if value is not None and value != "auto":
            raise ConfigError(f"{key}={value} does not apply to an ONNX model ({why}); drop it")
    return onnx_providers(device)


def onnx_providers(device: str) -> list[Any] | None:
    """ONNX Runtime's execution providers for a `device` setting (auto: CUDA when offered, else the CPU)."""
    if device == "auto":
        return None
    if device == "cpu":
        return ["CPUExecutionProvider"]
    try:
        import onnxruntime as ort
    except ImportError:
        return None  # OnnxSegmenter says how to install it
    kind, _, index = device.partition(":")
    if kind != "cuda" or "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(
            f"device={device}: this ONNX Runtime runs on {', '.join(ort.get_available_providers())}; use "
            "device=cpu (or pip install onnxruntime-gpu for device=cuda)"
        )
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


def check_against_graph(meta: dict[str, Any], session: Any, path: Path) -> None:
    """The metadata's channel and class counts against the graph's input and logits (when the graph fixes
    them), so that a mismatch is blamed on the file and not on the images."""

    def channels(what: str, shape: list[Any]) -> int | None:
        count = shape[1] if len(shape) == 4 else None
        if what == "logits" and not isinstance(count, int):
            # Files exported before the count was stated in the graph: one small run tells it.
            probe = np.zeros((1, meta["in_channels"], 64, 64), np.float32)
            try:
                count = session.run(["logits"], {"images": probe})[0].shape[1]
            except Exception as e:  # onnxruntime's own exception kinds
                raise ExportError(f"cannot run model {path}: {first_line(e)}") from None
        return count if isinstance(count, int) else None

    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    check_ports(meta, path, inputs, outputs, channels, "python -m deeplab.export")
