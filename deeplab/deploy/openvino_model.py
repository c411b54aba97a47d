"""A model exported by `python -m deeplab.export format=openvino|openvino_int8` (model.xml + model.bin, OpenVINO's
IR), run with OpenVINO on the CPU in the shape deeplab.models.inference expects: model(x) -> {"out": logits}.
The class names, normalisation and colours travel in the IR's runtime info under `deeplab` (the same JSON the
ONNX files carry)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeplab.deploy.graph import METADATA_KEY, GraphModel, check_ports, read_metadata
from deeplab.errors import ConfigError, ExportError, first_line

# `amp` as evaluate/predict/serve take it -> OpenVINO's inference precision hint (None: the device's default,
# bf16 on CPUs with AMX or AVX512-BF16, f32 elsewhere).
PRECISION = {"auto": None, "off": "f32", "bf16": "bf16", "fp16": "f16"}


def openvino_required() -> Any:
    try:
        import openvino
    except ImportError:
        raise ExportError('OpenVINO models need openvino: pip install -e ".[openvino]"') from None
    return openvino


class OpenVinoSegmenter(GraphModel):
    """An OpenVINO IR compiled for the CPU. precision: None (OpenVINO's default for the CPU at hand), f32, bf16
    or f16; threads: OpenVINO's inference threads (default: torch's thread count, so that one setting caps
    every runtime of the process)."""

    runtime = "OpenVINO"

    def __init__(self, path: str | Path, precision: str | None = None, threads: int | None = None) -> None:
        ov = openvino_required()
        path = Path(path)
        weights = path.with_suffix(".bin")
        for needed in (path, weights):
            if not needed.is_file():
                raise ExportError(
                    f"model {path}: {needed} does not exist (an OpenVINO model is model.xml + model.bin side by "
                    "side); export one with `python -m deeplab.export checkpoint=... format=openvino`"
                )
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as e:  # OpenVINO raises RuntimeError with several lines for a bad file
            raise ExportError(f"cannot load model {path}: {first_line(e)}") from None
        if not model.has_rt_info([METADATA_KEY]):
            raise ExportError(
                f"model {path} has no deeplab metadata (class names, normalisation); export it with "
                "`python -m deeplab.export format=openvino`"
            )
        self.meta: dict[str, Any] = read_metadata(model.get_rt_info([METADATA_KEY]).astype(str), path)
        check_io(self.meta, model, path)
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise ExportError(f"cannot compile model {path} for the CPU: {first_line(e)}") from None
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT")).split("'")[-2]
        self.request = self.compiled.create_infer_request()
        self.path = path

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 normalised images -> (B, num_classes, H, W) float32 logits."""
        self.request.infer({"images": np.ascontiguousarray(images, dtype=np.float32)})
        return np.array(
            self.request.get_tensor("logits").data, dtype=np.float32
        )  # a copy: the buffer is reused


def check_io(meta: dict[str, Any], model: Any, path: Path) -> None:
    """The graph takes `images` and returns `logits`, with the channel counts the metadata states."""

    def channels(what: str, port: Any) -> int | None:
        shape = port.get_partial_shape()
        return shape[1].get_length() if shape.rank.get_length() == 4 and shape[1].is_static else None

    inputs = {name: port for port in model.inputs for name in port.get_names()}
    outputs = {name: port for port in model.outputs for name in port.get_names()}
    check_ports(meta, path, inputs, outputs, channels, "python -m deeplab.export format=openvino")


def openvino_run_settings(
    output_stride: int | None, amp: str, channels_last: str | bool, device: str
) -> str | None:
    """OpenVINO's precision hint for evaluate's, predict's and serve's settings; those the IR fixes (stride,
    memory layout) and devices other than the CPU are refused with one line."""
    if output_stride is not None:
        raise ConfigError(
            f"eval.output_stride={output_stride} does not apply to an OpenVINO model (the stride is built into the "
            "graph); export it at that stride with `python -m deeplab.export output_stride=N`"
        )
    if channels_last is True:
        raise ConfigError(
            "channels_last=true does not apply to an OpenVINO model (it chooses its own layout); drop it"
        )
    if device not in ("auto", "cpu"):
        raise ConfigError(f"device={device}: OpenVINO models run on the CPU here; use device=cpu")
    return PRECISION[amp]
