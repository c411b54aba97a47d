"""format=onnx_int8: ONNX Runtime static quantisation (QDQ, per-channel weights) calibrated on training images,
its agreement with fp32 printed, and the int8 file scored by evaluate.py and run by predict."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.configs import compose_config, one_thread
from onnx import numpy_helper

from deeplab.deploy.evaluate import evaluate_checkpoint
from deeplab.deploy.export import export
from deeplab.deploy.onnx_model import OnnxSegmenter


@pytest.fixture(scope="module")
def int8_file(trained_run, tmp_path_factory) -> tuple[Path, str]:
    """(the tiny run's INT8 export, what the command printed)."""
    import contextlib
    import io

    run_dir, _, _ = trained_run
    out = tmp_path_factory.mktemp("int8") / "tiny_int8.onnx"
    cfg = compose_config(
        [f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}", f"output={out}", "trace_size=[64,80]",
         "format=onnx_int8", "calibration=3"],
        config_name="export",
    )  # fmt: skip
    printed = io.StringIO()
    with one_thread(), contextlib.redirect_stdout(printed):
        export(cfg, out.parent)
    return out, printed.getvalue()


def test_int8_export_is_qdq_per_channel_calibrated_and_reports_agreement(int8_file) -> None:
    path, printed = int8_file
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10  # QDQ format
    assert "Conv" in ops  # the float ops stay, wrapped in Q/DQ pairs that ONNX Runtime fuses
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # Conv weights are stored as int8 with one scale per output channel.
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    producers = {out: n for n in model.graph.node for out in n.output}
    per_channel = 0
    for name in conv_weights:
        dq = producers[name]
        assert dq.op_type == "DequantizeLinear"
        weights, scale = init[dq.input[0]], init[dq.input[1]]
        assert weights.dtype == np.int8
        per_channel += scale.size == weights.shape[0] > 1
    assert per_channel >= len(conv_weights) - 1  # every conv but a 1-output one
    assert "calibrated on 3 training images" in printed
    share = float(re.search(r"([\d.]+)% of pixels agree on (\d+) validation images", printed).group(1))
    assert share > 90.0
    session = OnnxSegmenter(path)  # the metadata came along: class names, normalisation
    assert session.label_names == ["background", "disc", "square", "triangle"]


def test_evaluate_scores_the_int8_file_close_to_the_checkpoint(int8_file, trained_run, tmp_path) -> None:
    path, _ = int8_file
    _, fp32, _ = trained_run  # the last validation of the run: last.pt's weights, in PyTorch fp32
    cfg = compose_config([f"checkpoint={path}", "num_workers=0"], config_name="evaluate")
    with one_thread():
        int8 = evaluate_checkpoint(cfg, tmp_path)
    assert int8["num_images"] == 4 and (tmp_path / "metrics.json").is_file()
    assert abs(int8["pixel_acc"] - fp32["pixel_acc"]) < 0.05


def test_a_failed_export_leaves_the_previous_file_and_no_temporary(
    trained_run, tmp_path, monkeypatch
) -> None:
    """The file is checked (ONNX against PyTorch; INT8 calibrated and compared) under a temporary name and
    renamed into place only when that succeeded."""
    import deeplab.deploy.quantize as quantize
    from deeplab.errors import DatasetError, ExportError

    checkpoint = trained_run[0] / "checkpoints" / "last.pt"
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")

    def config(*extra: str):
        return compose_config(
            [f"checkpoint={checkpoint}", f"output={target}", "trace_size=[64,80]", *extra],
            config_name="export",
        )

    with one_thread(), pytest.raises(ExportError, match="disagrees with PyTorch.*nothing was written"):
        export(config("tolerance=1e-30"), tmp_path)
    assert target.read_bytes() == b"the previous export" and sorted(tmp_path.iterdir()) == [target]

    def unreadable_val(*args, **kwargs):
        raise DatasetError("val image x.jpg cannot be read")

    monkeypatch.setattr(quantize, "mask_agreement", unreadable_val)
    with one_thread(), pytest.raises(ExportError, match="INT8 calibration reads the training images"):
        export(config("format=onnx_int8", "calibration=2"), tmp_path)
    assert target.read_bytes() == b"the previous export" and sorted(tmp_path.iterdir()) == [target]
