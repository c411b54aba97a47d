"""A model exported by deeplab.export, run with ONNX Runtime, in the shape deeplab.inference expects:
model(x) -> {"out": logits}, with the class names, normalisation and colours read from the file's metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeplab.errors import ExportError, first_line

METADATA_KEY = "deeplab"


class OnnxSegmenter:
    """ONNX Runtime session over a deeplab ONNX file (CPU, or CUDA when onnxruntime-gpu offers it)."""

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
        self.meta: dict[str, Any] = json.loads(props[METADATA_KEY])
        self.path = path

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 normalised images -> (B, num_classes, H, W) float32 logits."""
        return self.session.run(["logits"], {"images": np.ascontiguousarray(images, dtype=np.float32)})[0]

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.logits(x.detach().float().cpu().numpy())
        return {"out": torch.from_numpy(out).to(x.device)}

    def eval(self) -> OnnxSegmenter:  # deeplab.inference treats models alike
        return self
