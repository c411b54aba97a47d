"""The configs of the commands that use a trained model: evaluate.py, deeplab.predict, deeplab.demo, deeplab.serve,
deeplab.export."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from deeplab.config.base import (
    Amp,
    Device,
    Flag,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
)
from deeplab.config.roles import key_roles, keys_with
from deeplab.config.train import EvalConfig, PathsConfig, TrainConfig
from deeplab.errors import ConfigError


def location_keys() -> list[str]:
    """The dataset keys declared LOCATION (where the data lies and how it is read): what evaluate.py may
    override in a model's dataset section."""
    return keys_with(key_roles(TrainConfig), "location", "dataset")


class ModelRun(Section):
    """What running a trained model takes (evaluate.py, deeplab.deploy.predict, deeplab.demo): which model, and where
    and how it runs (deeplab.deploy.predict.load_segmenter, deeplab.runtime)."""

    task_name: str
    checkpoint: str
    """A checkpoint train.py wrote (last.pt or best.pt), a run folder or its checkpoints/ folder (best.pt, else
    last.pt), an exported model folder (format=hub), torchvision's DeepLabV3 .pth, or an ONNX file of
    python -m deeplab.export (run with ONNX Runtime); see deeplab.artifacts.locate."""
    device: Device
    amp: Amp
    channels_last: Flag
    eval: EvalConfig
    paths: PathsConfig


class EvaluateConfig(ModelRun):
    """configs/evaluate.yaml: `python evaluate.py checkpoint=PATH` (an ONNX file is scored on the dataset its
    metadata records)."""

    num_workers: NonNegativeInt
    dataset: dict[str, Any]
    """Non-null values replace the model's dataset settings; only location keys (location_keys()), e.g.
    dataset.root=/data/VOCdevkit, dataset.skip_bad=true (an unreadable image left out of the metrics)."""

    @model_validator(mode="after")
    def _dataset(self) -> EvaluateConfig:
        allowed = location_keys()
        for key, value in self.dataset.items():
            if key not in allowed and value is not None:
                raise ConfigError(
                    f"dataset.{key}: evaluate.py may change where the model's data lies ({', '.join(allowed)}), "
                    f"not what it is; drop dataset.{key}"
                )
        return self


class PredictConfig(ModelRun):
    """configs/predict.yaml: `python -m deeplab.predict checkpoint=PATH input=FILE_OR_DIR_OR_VIDEO`."""

    input: str
    output: str
    save_masks: bool
    """Video input: also write one class-id PNG per frame (output/<video name>/<frame>.png)."""
    autolabel: bool
    """Write the predictions as a folder dataset to correct and train on: output/images, output/masks (palette
    PNGs), output/overlays and output/dataset/autolabel.yaml (deeplab.deploy.autolabel)."""
    overwrite: bool = False
    """autolabel: also label the photos that already have a mask in output/masks (false: those masks, perhaps
    corrected by hand, are kept and only new photos are labelled)."""
    raster_color: bool
    """A GeoTIFF input (predicted in eval.window windows with eval.overlap, deeplab.deploy.raster): also write the
    colour mask as an RGB GeoTIFF."""
    alpha: Annotated[float, Field(ge=0, le=1)]
    """Opacity of the colour mask drawn over the photo."""


class DemoConfig(ModelRun):
    """configs/demo.yaml: `python -m deeplab.demo checkpoint=PATH`, a Gradio page (deeplab.demo)."""

    host: str
    """The address the page is served on: 127.0.0.1 (this machine) or 0.0.0.0 (others too)."""
    port: Annotated[int, Field(ge=1, le=65535)]
    alpha: Annotated[float, Field(ge=0, le=1)]
    """Opacity of the colour mask drawn over the photo."""
    max_pixels: PositiveInt = 25_000_000
    """The largest upload in pixels (its header is read before the image is decoded): a 10000x10000 PNG of
    300 KB took 125 s and 6 GB."""
    max_upload_mb: PositiveInt = 50
    """The largest upload in MB (Gradio refuses larger files)."""


class ServeConfig(ModelRun):
    """configs/serve.yaml: `python -m deeplab.serve checkpoint=PATH`, an HTTP server with dynamic batching
    (deeplab.deploy.serve, on LitServe)."""

    host: Literal["127.0.0.1", "0.0.0.0", "::"]
    """127.0.0.1 (this machine only), 0.0.0.0 or :: (every interface: other machines too)."""
    port: Annotated[int, Field(ge=1024, le=65535)]
    max_batch_size: Annotated[int, Field(ge=1, le=256)]
    """Requests that arrive together share one forward pass, up to this many images (1: one at a time)."""
    max_batch_wait_ms: Annotated[float, Field(ge=0, le=10_000)]
    """How long the first request of a batch waits for others to join it."""
    workers: Annotated[int, Field(ge=1, le=64)]
    """Model processes, each with its own copy of the model and cores // workers threads."""
    timeout_s: PositiveFloat
    """A request still waiting for a worker after this long gets 504."""
    max_request_mb: PositiveFloat
    """A larger request body gets 413 before it is read."""
    max_pixels: PositiveInt
    """A larger image gets 413, measured from its header before it is decoded (a decompression bomb)."""
    alpha: Annotated[float, Field(ge=0, le=1)]
    """Opacity of the colour mask of ?output=overlay."""


class ExportConfig(Section):
    """configs/export.yaml: `python -m deeplab.export checkpoint=PATH format=onnx|exported_program`."""

    task_name: str
    checkpoint: str
    """A checkpoint, a run folder or an exported model folder (what evaluate.py takes, ONNX files aside)."""
    format: Literal["onnx", "onnx_int8", "openvino", "openvino_int8", "exported_program", "hub"]
    """onnx_int8: ONNX quantised to INT8 by ONNX Runtime (static, QDQ, per-channel weights) for the CPU; openvino:
    OpenVINO's IR (model.xml + model.bin, fp32 weights); openvino_int8: the IR quantised by NNCF; hub: the
    model folder Hugging Face tooling reads (config.json = the model card, model.safetensors, README.md)."""
    calibration: PositiveInt
    """onnx_int8, openvino_int8: how many training images (through the evaluation transform) calibrate the activation
    ranges; as many validation images measure how often int8 and fp32 agree."""
    exporter: Literal["dynamo", "torchscript"]
    """ONNX: the TorchScript tracer (seconds; PyTorch has deprecated it), or PyTorch's torch.export-based
    exporter (tens of seconds for a ResNet-101; the one PyTorch recommends). Both are checked in the tests."""
    output: str | None
    """null: model.onnx (model.xml + model.bin for openvino, model.pt2, the folder model/ for format=hub) in the
    run dir."""
    output_stride: Literal[8, 16] | None
    opset: Annotated[int, Field(ge=17)]
    trace_size: Annotated[list[Annotated[int, Field(ge=32)]], Field(min_length=2, max_length=2)]
    check: bool
    tolerance: PositiveFloat
    paths: PathsConfig
