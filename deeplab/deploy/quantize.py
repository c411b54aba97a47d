"""INT8 for the CPU: `python -m deeplab.export checkpoint=PATH format=onnx_int8 calibration=N`.

The model is exported to ONNX in fp32 (and checked against PyTorch as any ONNX export), then quantised with
ONNX Runtime's static quantisation: QDQ format (QuantizeLinear/DequantizeLinear pairs, which ONNX Runtime
fuses into integer kernels), weights int8 per output channel, activations uint8 with ranges calibrated
(min/max) on N training images read through the evaluation transform (whole images, normalised as in
validation). The cost is then measured: the share of pixels whose int8 class equals the fp32 class, on up to
N validation images (held out from the calibration).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from deeplab.atomicfile import atomic_path
from deeplab.config import DatasetBase
from deeplab.deploy.graph import GraphModel
from deeplab.deploy.onnx_model import OnnxSegmenter
from deeplab.errors import DatasetError, ExportError, first_line


def normalised_images(dataset: DatasetBase, split: str, count: int) -> Iterator[np.ndarray]:
    """Up to `count` images of a split as the evaluation sees them: whole, (1, C, H, W) float32 normalised
    with the dataset's mean and std; spread evenly over the split."""
    from deeplab.data import load_split
    from deeplab.runtime import Normalizer

    images = load_split(dataset, split, augment=False)  # a model card's dataset section
    normalize = Normalizer(dataset.mean, dataset.std, torch.device("cpu"))
    picks = np.linspace(0, len(images) - 1, num=min(count, len(images))).round().astype(int)
    for index in dict.fromkeys(picks.tolist()):  # distinct, in order
        item = images[index]
        if item is None:  # dataset.skip_bad left a bad image out
            continue
        image = item[0].unsqueeze(0)  # (1, C, H, W) uint8
        yield normalize(image).numpy()


def calibration_reader(images: Iterator[np.ndarray]):
    """An ONNX Runtime CalibrationDataReader feeding `images` one at a time to the input `images`."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.count = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(images, None)
            if image is None:
                return None
            self.count += 1
            return {"images": image}

    return Reader()


def quantize_int8(fp32: Path, int8: Path, images: Iterator[np.ndarray]) -> int:
    """Write the static INT8 (QDQ, per-channel weights) version of the ONNX model `fp32` to `int8`, with the
    metadata of `fp32`; returns the number of calibration images used."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = calibration_reader(images)
    with tempfile.TemporaryDirectory(prefix="deeplab-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        # Shape inference and graph optimisation (BatchNorm already folded by the exporter) first, as ONNX
        # Runtime recommends: tensors of unknown shape would stay in float.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        with atomic_path(int8) as tmp:
            try:
                quantize_static(
                    str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    calibration_providers=["CPUExecutionProvider"],
                )  # fmt: skip
            except ValueError as e:  # "No data is collected."
                raise ExportError(f"INT8 calibration failed: {first_line(e)}") from None
            # quantize_static keeps the graph's metadata only by chance of its version: copy it from fp32.
            source, model = onnx.load(str(fp32)), onnx.load(str(tmp))
            del model.metadata_props[:]
            model.metadata_props.extend(source.metadata_props)
            onnx.save(model, str(tmp))
    return reader.count


def mask_agreement(
    reference: GraphModel, quantised: GraphModel, images: Iterator[np.ndarray]
) -> tuple[float, int]:
    """(share of pixels where the two exported models' argmax classes agree, images compared)."""
    same = total = count = 0
    for image in images:
        a = reference.logits(image).argmax(1)
        b = quantised.logits(image).argmax(1)
        same += int((a == b).sum())
        total += a.size
        count += 1
    return (same / total if total else float("nan")), count


def export_int8(
    export_fp32: Callable[[Path], object], dataset: DatasetBase, path: Path, calibration: int
) -> Path:
    """export_fp32(fp32_path) writes (and checks) the fp32 ONNX file; this quantises it to `path`, calibrated
    on the training images of `dataset` (the model's dataset section), and prints the int8/fp32 agreement of
    class masks on its validation images."""
    with tempfile.TemporaryDirectory(prefix="deeplab-fp32-") as work:
        fp32 = Path(work) / "model_fp32.onnx"
        export_fp32(fp32)
        try:
            used = quantize_int8(fp32, path, normalised_images(dataset, "train", calibration))
            agreement, compared = mask_agreement(
                OnnxSegmenter(fp32, ["CPUExecutionProvider"]), OnnxSegmenter(path, ["CPUExecutionProvider"]),
                normalised_images(dataset, "val", calibration),
            )  # fmt: skip
        except DatasetError as e:
            raise ExportError(
                f"INT8 calibration reads the training images of the checkpoint's dataset: {e}"
            ) from None
    print(f"INT8 QDQ with per-channel weights, calibrated on {used} training images")
    print(f"int8 vs fp32 class masks: {100 * agreement:.2f}% of pixels agree on {compared} validation images")
    return path
