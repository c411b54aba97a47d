"""Export a trained model for deployment: `python -m deeplab.export checkpoint=PATH [format=onnx|onnx_int8|openvino|
openvino_int8|exported_program|hub]`.

The exported model takes `images`, float32 (B, C, H, W) normalised as in training (dataset.mean / std), and
returns `logits` (B, num_classes, H, W); batch, height and width are free. ONNX files carry the class names,
the normalisation, the colours and the overlay background classes in their metadata (deeplab.deploy.onnx_model reads
them back, and `deeplab.predict checkpoint=FILE.onnx` uses them). After writing, the command runs the file (ONNX
Runtime, or the exported program) and PyTorch on two other input sizes, one of them with batch 2, and fails with
one line if the logits differ by more than `tolerance`.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from deeplab.artifacts.card import ModelCard
from deeplab.atomicfile import atomic_path
from deeplab.cli import hydra_main
from deeplab.config import ExportConfig, TrainConfig, export_config
from deeplab.deploy.onnx_model import METADATA_KEY
from deeplab.errors import ConfigError, ExportError, first_line

log = logging.getLogger(__name__)


class LogitsOnly(nn.Module):
    """The model's main logits as one tensor (what deployment wants; the aux head is training-only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["out"]


def metadata(cfg: ModelCard | TrainConfig, output_stride: int | None = None) -> dict[str, object]:
    """What a runtime needs besides the graph: class names, normalisation, colours, channels; and the dataset
    section (as a checkpoint holds it), so that evaluate.py scores the file on the same validation set."""
    from deeplab.data import palette

    d = cfg.dataset
    names = d.label_names()
    return {
        "class_names": names,
        "num_classes": d.num_classes,
        "in_channels": d.in_channels,
        "mean": list(d.mean),
        "std": list(d.std),
        "ignore_index": d.ignore_index,
        "palette": palette(d)[: max(len(names), 1)].tolist(),
        "overlay_background": d.overlay_background_ids(),
        "multilabel": d.multilabel,  # the logits are one sigmoid per class, present above threshold
        "threshold": d.threshold,
        "model": f"{cfg.model.name}/{cfg.backbone.name}",
        "output_stride": output_stride or cfg.backbone.output_stride,
        "dataset": d.model_dump(),
    }


def check_sizes(trace_size: list[int]) -> list[tuple[int, int, int]]:
    """(batch, height, width) of the check: two sizes other than the traced one, one with batch 2."""
    h, w = trace_size
    return [(1, h + 37, w - 23), (2, max(h - 61, 33), w + 45)]


def export_onnx(
    wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int, meta: dict[str, object], exporter: str
) -> None:
    """exporter: torchscript (the tracer: seconds; deprecated by PyTorch, so its warnings are silenced here) or
    dynamo (torch.export-based, the one PyTorch recommends: tens of seconds)."""
    try:
        import onnx
    except ImportError:
        raise ExportError('ONNX export needs onnx and onnxruntime: pip install -e ".[export]"') from None
    names = {"input_names": ["images"], "output_names": ["logits"], "opset_version": opset}
    with atomic_path(path) as tmp:
        write_onnx(wrapper, example, tmp, exporter, names)
        model = onnx.load(str(tmp))
        # The tracer leaves the class count symbolic ("Resizelogits_dim_1"); stated, loaders can check it.
        model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = int(str(meta["num_classes"]))
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        onnx.save(model, str(tmp))


def write_onnx(
    wrapper: nn.Module, example: torch.Tensor, path: Path, exporter: str, names: dict[str, object]
) -> None:
    try:
        if exporter == "dynamo":
            batch, height, width = (torch.export.Dim(n, min=1) for n in ("batch", "height", "width"))
            logging.getLogger("onnx_ir").setLevel(
                logging.WARNING
            )  # an INFO line per deduplicated initializer
            torch.onnx.export(
                wrapper, (example,), str(path), dynamic_shapes={"images": {0: batch, 2: height, 3: width}},
                dynamo=True, external_data=False, **names,
            )  # fmt: skip
        else:
            free = {0: "batch", 2: "height", 3: "width"}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
                torch.onnx.export(
                    wrapper, (example,), str(path), dynamic_axes={"images": free, "logits": free}, dynamo=False,
                    **names,
                )  # fmt: skip
    except Exception as e:  # the exporters' errors are many kinds; the user gets one line
        raise ExportError(f"ONNX export failed: {first_line(e)}") from None


def export_program(wrapper: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        auto = torch.export.Dim.AUTO  # free sizes, with the ranges the model allows inferred
        program = torch.export.export(
            wrapper, (example,), dynamic_shapes={"images": {0: auto, 2: auto, 3: auto}}
        )
    except Exception as e:
        raise ExportError(f"torch.export of the model failed: {first_line(e)}") from None
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))


def max_difference(cfg: ExportConfig, wrapper: nn.Module, path: Path, in_channels: int) -> float:
    """The largest |logit difference| between the exported file (.onnx, OpenVINO's .xml run at f32, .pt2) and
    PyTorch over the check sizes."""
    generator = torch.Generator().manual_seed(0)
    if path.suffix in (".onnx", ".xml"):  # onnx; the fp32 files of onnx_int8, openvino and openvino_int8
        from deeplab.deploy.onnx_model import OnnxSegmenter
        from deeplab.deploy.openvino_model import OpenVinoSegmenter

        exported = OnnxSegmenter(path) if path.suffix == ".onnx" else OpenVinoSegmenter(path, "f32")
        run = lambda x: torch.from_numpy(exported.logits(x.numpy()))  # noqa: E731
    else:
        module = torch.export.load(str(path)).module()
        run = lambda x: module(x)  # noqa: E731
    worst = 0.0
    for batch, height, width in check_sizes(cfg.trace_size):
        x = torch.randn(batch, in_channels, height, width, generator=generator)
        with torch.no_grad():
            expected, got = wrapper(x), run(x)
        if got.shape != expected.shape:
            raise ExportError(f"{path} returns logits of shape {tuple(got.shape)} for input {tuple(x.shape)}")
        difference = float((got - expected).abs().max())
        print(f"check {batch}x{in_channels}x{height}x{width}: max |logits difference| {difference:.2e}")
        worst = max(worst, difference)
    return worst


def export(cfg: ExportConfig | DictConfig, run_dir: Path) -> Path:
    """Write the exported model and return its path (checked unless cfg.check is false)."""
    from deeplab.deploy.restore import load_trained_model

    cfg = export_config(cfg)
    if cfg.format == "hub":
        return export_model_folder(cfg, run_dir)
    suffix = {"exported_program": ".pt2", "openvino": ".xml", "openvino_int8": ".xml"}.get(
        cfg.format, ".onnx"
    )
    path = Path(cfg.output) if cfg.output else run_dir / f"model{suffix}"
    if suffix == ".xml" and path.suffix != ".xml":
        raise ConfigError(
            f"output={path}: an OpenVINO model is NAME.xml + NAME.bin; give output={path.with_suffix('.xml')}"
        )
    refuse_overwriting(path, cfg.checkpoint, suffix)
    model, card = load_trained_model(cfg.checkpoint)
    if cfg.output_stride is not None:
        model.set_output_stride(cfg.output_stride)
    model = model.eval().cpu()
    wrapper = LogitsOnly(model).eval()
    in_channels = card.dataset.in_channels
    example = torch.randn(2, in_channels, *cfg.trace_size)  # batch 2: a traced 1 would become a constant
    # Written and checked under a temporary name, renamed into place only when both succeeded: a failed check,
    # calibration or signal leaves any previous file as it was.

    def write_fp32(
        fp32: Path,
    ) -> dict[str, object]:  # the file quantised or converted, checked as format=onnx is
        meta = metadata(card, model.output_stride)
        export_onnx(wrapper, example, fp32, cfg.opset, meta, cfg.exporter)
        if cfg.check:
            check_export(cfg, wrapper, fp32, in_channels)
        return meta

    try:
        if cfg.format in ("openvino", "openvino_int8"):
            from deeplab.deploy.openvino_export import export_openvino

            def check_ir(xml: Path) -> None:
                if cfg.check:
                    check_export(cfg, wrapper, xml, in_channels)

            export_openvino(
                write_fp32, check_ir, card.dataset, path, cfg.format == "openvino_int8", cfg.calibration
            )
            print(f"wrote {path} + {path.with_suffix('.bin').name} "
                  f"({path.with_suffix('.bin').stat().st_size / 2**20:.1f} MB, output stride {model.output_stride})")  # fmt: skip
            return path
        with atomic_path(path) as tmp:
            if cfg.format == "onnx_int8":
                from deeplab.deploy.quantize import export_int8

                export_int8(write_fp32, card.dataset, tmp, cfg.calibration)
            else:
                if cfg.format == "onnx":
                    export_onnx(
                        wrapper, example, tmp, cfg.opset, metadata(card, model.output_stride), cfg.exporter
                    )
                else:
                    export_program(wrapper, example, tmp)
                if cfg.check:
                    check_export(cfg, wrapper, tmp, in_channels)
    except OSError as e:
        raise ExportError(
            f"could not write {path}: {e.strerror or e}; check free disk space and that the folder is writable "
            f"(any previous {path.name} was left intact)"
        ) from None
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB, output stride {model.output_stride})")
    return path


def export_model_folder(cfg: ExportConfig, run_dir: Path) -> Path:
    """format=hub: the model folder (config.json, model.safetensors, README.md; deeplab.deploy.hub), checked to load
    back with the same weights unless cfg.check is false."""
    from deeplab.artifacts.locate import locate
    from deeplab.deploy.hub import write_model_folder
    from deeplab.deploy.restore import load_trained_model, read_model_folder

    if cfg.output_stride is not None:
        raise ConfigError(
            "output_stride: the model folder keeps the stride the model was trained at; evaluate or predict at "
            "another with eval.output_stride=N"
        )
    folder = Path(cfg.output) if cfg.output else run_dir / "model"
    source = locate(cfg.checkpoint).path
    if folder.resolve() == source.resolve():
        raise ExportError(f"output={folder} is the model folder being exported; give another folder")
    model, card = load_trained_model(source)  # the file located (a run folder is said once which it uses)
    state = model.state_dict()
    try:
        write_model_folder(state, card, folder)
    except OSError as e:
        raise ExportError(
            f"could not write {folder}: {e.strerror or e}; check free disk space and that the folder is writable"
        ) from None
    if cfg.check:
        _, written = read_model_folder(folder)
        if written.keys() != state.keys() or not all(torch.equal(written[k], state[k]) for k in state):
            raise ExportError(f"{folder / 'model.safetensors'} does not hold the checkpoint's weights")
    print(f"wrote {folder} (config.json, model.safetensors, README.md)")
    return folder


def refuse_overwriting(output: Path, checkpoint: str, suffix: str) -> None:
    """ExportError when the output is a file the model is read from (the checkpoint, the one a run folder
    names, a model folder's files), by the same path or through a link."""
    from deeplab.artifacts.locate import CARD_FILE, WEIGHTS_FILE, locate

    source = locate(checkpoint)
    inputs = [source.path / CARD_FILE, source.path / WEIGHTS_FILE] if source.kind == "hub" else [source.path]
    for read in inputs:
        same = output.resolve() == read.resolve()
        if not same and output.exists() and read.exists():
            same = os.path.samefile(output, read)  # a hard link: another name of the same file
        if same:
            raise ExportError(
                f"output={output} is the checkpoint being exported ({read}); writing it would destroy the "
                f"checkpoint: give another file, e.g. output={output.with_name(output.stem + '_exported' + suffix)}"
            )


def check_export(cfg: ExportConfig, wrapper: nn.Module, path: Path, in_channels: int) -> None:
    """ExportError unless the exported file's logits are within cfg.tolerance of PyTorch's."""
    worst = max_difference(cfg, wrapper, path, in_channels)
    if not np.isfinite(worst) or worst > cfg.tolerance:
        raise ExportError(
            f"the exported model disagrees with PyTorch: max |logits difference| {worst:.3g} > tolerance "
            f"{cfg.tolerance}, so nothing was written (tolerance=... to accept it)"
        )


@hydra_main(config_path="../../configs", config_name="export")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from deeplab.cli import exit_on_user_error

    with exit_on_user_error():
        export(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
