"""OpenVINO for the CPU: `python -m deeplab.export checkpoint=PATH format=openvino|openvino_int8 [calibration=N]`.

The model is exported to ONNX in fp32 and checked against PyTorch as any ONNX export, converted by OpenVINO's
own converter (ov.convert_model) and saved as IR in fp32 (model.xml + model.bin; OpenVINO's default would
store the weights in fp16). The IR, run at f32 precision, is checked against PyTorch at the same two sizes.
openvino_int8 then quantises the IR with NNCF's post-training quantisation, calibrated on N training images
read through the evaluation transform, as format=onnx_int8 is; the cost is measured as the share of pixels whose
class agrees with the fp32 IR on up to N validation images. The `deeplab` metadata travels in the IR's runtime
info. Both files are renamed into place together (deeplab.atomicfile.atomic_files), after every check passed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deeplab.atomicfile import atomic_files
from deeplab.config import DatasetBase
from deeplab.deploy.graph import METADATA_KEY
from deeplab.deploy.openvino_model import OpenVinoSegmenter, openvino_required
from deeplab.errors import DatasetError, ExportError, first_line


def convert(onnx_file: Path, meta: dict[str, Any]) -> Any:
    """The ov.Model of a deeplab ONNX file, with the deeplab metadata in its runtime info."""
    ov = openvino_required()
    try:
        model = ov.convert_model(str(onnx_file))
    except Exception as e:  # the converter's errors come in several kinds and many lines
        raise ExportError(f"OpenVINO could not convert the ONNX model: {first_line(e)}") from None
    model.set_rt_info(json.dumps(meta), [METADATA_KEY])
    return model


def save_ir(model: Any, xml: Path) -> None:
    """model.xml + model.bin with fp32 weights (save_model compresses them to fp16 unless told not to)."""
    openvino_required().save_model(model, str(xml), compress_to_fp16=False)


def nncf_quiet() -> Any:
    """nncf, its log going through the logging configuration like every other library's: NNCF binds a handler
    to the sys.stdout of its import and writes INFO lines there, past the command's own output settings."""
    import logging

    try:
        import nncf
    except ImportError:
        raise ExportError('format=openvino_int8 needs nncf: pip install -e ".[openvino]"') from None
    nncf_logger = logging.getLogger("nncf")
    for handler in list(nncf_logger.handlers):
        nncf_logger.removeHandler(handler)
    nncf_logger.propagate = True
    nncf_logger.setLevel(logging.WARNING)
    return nncf


def quantize(model: Any, dataset: DatasetBase, calibration: int) -> tuple[Any, int]:
    """(the INT8 ov.Model NNCF makes of `model`, the number of calibration images), calibrated on the training
    images of `dataset` (the model's dataset section) as the evaluation reads them."""
    nncf = nncf_quiet()
    from deeplab.deploy.quantize import normalised_images

    try:
        images = list(normalised_images(dataset, "train", calibration))  # (1, C, H, W) float32 each
    except DatasetError as e:
        raise ExportError(
            f"INT8 calibration reads the training images of the checkpoint's dataset: {e}"
        ) from None
    if not images:
        raise ExportError("INT8 calibration found no training images in the checkpoint's dataset")
    try:
        quantised = nncf.quantize(model, nncf.Dataset(images), subset_size=len(images))
    except Exception as e:  # NNCF's errors are many kinds
        raise ExportError(f"NNCF quantisation failed: {first_line(e)}") from None
    return quantised, len(images)


def export_openvino(
    write_fp32: Callable[[Path], dict[str, Any]], check: Callable[[Path], None], dataset: DatasetBase,
    path: Path, int8: bool, calibration: int,
) -> Path:  # fmt: skip
    """write_fp32(onnx_path) writes (and checks) the fp32 ONNX file and returns its metadata; check(xml) compares
    an IR with PyTorch. Writes `path` (.xml) and its .bin, INT8 when `int8`."""
    from deeplab.deploy.quantize import mask_agreement, normalised_images

    # The work folder is the system's temporary one: a run killed outright leaves nothing beside the output (the
    # two files are copied into atomic_files' temporary names, which the next write of the folder clears).
    with tempfile.TemporaryDirectory(prefix="deeplab-openvino-") as work:
        onnx_file, ir = Path(work) / "model.onnx", Path(work) / "fp32.xml"
        meta = write_fp32(onnx_file)
        model = convert(onnx_file, meta)
        save_ir(model, ir)
        check(ir)
        if int8:
            quantised, used = quantize(model, dataset, calibration)
            quantised.set_rt_info(json.dumps(meta), [METADATA_KEY])
            int8_ir = Path(work) / "int8.xml"
            save_ir(quantised, int8_ir)
            try:
                agreement, compared = mask_agreement(
                    OpenVinoSegmenter(ir, "f32"), OpenVinoSegmenter(int8_ir),
                    normalised_images(dataset, "val", calibration),
                )  # fmt: skip
            except DatasetError as e:
                raise ExportError(f"measuring INT8 against fp32 reads the validation images: {e}") from None
            print(f"OpenVINO INT8 (NNCF post-training quantisation), calibrated on {used} training images")
            print(
                f"int8 vs fp32 class masks: {100 * agreement:.2f}% of pixels agree on {compared} validation images"
            )
            ir = int8_ir
        with atomic_files([path, path.with_suffix(".bin")]) as (xml_tmp, bin_tmp):
            shutil.copyfile(ir, xml_tmp)
            shutil.copyfile(ir.with_suffix(".bin"), bin_tmp)
    return path
