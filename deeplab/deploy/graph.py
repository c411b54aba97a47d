"""What the exported models share, whichever runtime runs them (ONNX Runtime: deeplab.deploy.onnx_model;
OpenVINO: deeplab.deploy.openvino_model): the `deeplab` metadata written beside the graph (class names,
normalisation, colours, the dataset section) and the model-like face deeplab.models.inference expects,
model(x) -> {"out": logits}."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deeplab.errors import ExportError

METADATA_KEY = "deeplab"


class GraphModel:
    """An exported graph behind the interface of an eval-mode nn.Module. Subclasses set `meta` and `path` and
    implement `logits`."""

    meta: dict[str, Any]
    path: Path
    training = False  # the eval loop asks, as of an nn.Module
    runtime = "graph"

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 normalised images -> (B, num_classes, H, W) float32 logits."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.logits(np.ascontiguousarray(x.detach().float().cpu().numpy()))
        return {"out": torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)}

    @property
    def output_stride(self) -> int | None:
        """The stride built into the graph (None for files exported before it was recorded)."""
        return self.meta.get("output_stride")

    def eval(self) -> GraphModel:  # deeplab.models.inference treats models alike
        return self

    def train(self, mode: bool = True) -> GraphModel:
        if mode:
            raise ValueError(f"an exported {self.runtime} model cannot be trained")
        return self


class GraphMetadata(BaseModel):
    """The `deeplab` metadata entry deeplab.export writes (see deeplab.deploy.export.metadata); keys added later
    are optional, so that older files still load, and keys this version does not know are kept."""

    model_config = ConfigDict(extra="allow")

    class_names: list[str]
    num_classes: Annotated[int, Field(ge=1)]
    in_channels: Annotated[int, Field(ge=1)]
    mean: list[float]
    std: list[Annotated[float, Field(gt=0)]]
    ignore_index: int
    palette: list[Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]]
    model: str | None = None
    output_stride: int | None = None
    dataset: dict[str, Any] | None = None
    """The training config's dataset section: what evaluate.py scores the file on."""


def read_metadata(text: str, path: Path) -> dict[str, Any]:
    """The parsed, checked metadata; anything malformed is an ExportError of one line."""
    fix = "re-export it with `python -m deeplab.export checkpoint=...`"
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExportError(f"model {path}: its deeplab metadata is not valid JSON ({e}); {fix}") from None
    if not isinstance(raw, dict):
        raise ExportError(f"model {path}: its deeplab metadata is {type(raw).__name__}, not an object; {fix}")
    try:
        meta = GraphMetadata.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(part) for part in err["loc"])
        raise ExportError(
            f"model {path}: its deeplab metadata's {key}: {err['msg'].lower()}; {fix}"
        ) from None
    multilabel = bool(raw.get("multilabel", False))  # each class on its own: one name per class
    # a binary model predicts background + the class
    labels = 2 if meta.num_classes == 1 and not multilabel else meta.num_classes
    if len(meta.class_names) != labels:
        raise ExportError(
            f"model {path}: its metadata lists {len(meta.class_names)} class names but num_classes "
            f"{meta.num_classes} needs {labels}; {fix}"
        )
    for key in ("mean", "std"):
        values = getattr(meta, key)
        if len(values) != meta.in_channels:
            raise ExportError(
                f"model {path}: its metadata has {len(values)} {key} values but in_channels {meta.in_channels}; {fix}"
            )
    return meta.model_dump()


def check_ports(
    meta: dict[str, Any],
    path: Path,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    channels: Callable[[str, Any], int | None],
    export: str,
) -> None:
    """A graph's ports by name (inputs, outputs) against what deeplab.export writes: `images` in, `logits` out,
    with the metadata's channel and class counts where channels(what, port) can tell them ("input" or
    "logits"; None: the graph leaves it free), so that a mismatch is blamed on the file and not on the images.
    `export`: the command that writes such a file."""
    if "images" not in inputs or "logits" not in outputs:
        raise ExportError(
            f"model {path} takes {sorted(inputs)} and returns {sorted(outputs)}, not images -> logits; "
            f"export it with `{export}`"
        )
    for what, port, key in (
        ("input", inputs["images"], "in_channels"),
        ("logits", outputs["logits"], "num_classes"),
    ):
        check_channels(meta, path, key, what, channels(what, port))


def check_channels(meta: dict[str, Any], path: Path, key: str, what: str, channels: int | None) -> None:
    """ExportError when the graph's `what` has a channel count other than the metadata's `key` says."""
    if isinstance(channels, int) and channels != meta[key]:
        raise ExportError(
            f"model {path}: its metadata says {key} {meta[key]} but the graph's {what} has {channels} "
            "channels; re-export it with `python -m deeplab.export checkpoint=...`"
        )


def load_graph_model(
    path: Path, kind: str, output_stride: int | None, amp: str, channels_last: str | bool, device: str
) -> GraphModel:
    """The exported graph at `path` (kind onnx or openvino, as deeplab.artifacts.locate names it) on the runtime
    that runs it, with evaluate's, predict's and serve's run settings (those the graph fixes are refused)."""
    if kind == "openvino":
        from deeplab.deploy.openvino_model import OpenVinoSegmenter, openvino_run_settings

        return OpenVinoSegmenter(path, openvino_run_settings(output_stride, amp, channels_last, device))
    from deeplab.deploy.onnx_model import OnnxSegmenter, onnx_run_settings

    return OnnxSegmenter(path, providers=onnx_run_settings(output_stride, amp, channels_last, device))
