"""format=openvino and openvino_int8: OpenVINO's IR with the model card in its runtime info, checked against
PyTorch at other sizes, scored by evaluate.py and run by predict like the checkpoint; NNCF's INT8."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import compose_config, one_thread
from PIL import Image

pytest.importorskip("openvino")

from deeplab.deploy.evaluate import evaluate_checkpoint  # noqa: E402
from deeplab.deploy.export import LogitsOnly, export  # noqa: E402
from deeplab.deploy.openvino_model import OpenVinoSegmenter  # noqa: E402
from deeplab.deploy.predict import predict  # noqa: E402
from deeplab.deploy.restore import load_trained_model  # noqa: E402
from deeplab.errors import ConfigError, ExportError  # noqa: E402


def export_to(checkpoint: Path, out: Path, *extra: str) -> str:
    """Run the export command's function; returns what it printed."""
    cfg = compose_config(
        [f"checkpoint={checkpoint}", f"output={out}", "trace_size=[64,80]", *extra], config_name="export"
    )
    printed = io.StringIO()
    with one_thread(), contextlib.redirect_stdout(printed):
        export(cfg, out.parent)
    return printed.getvalue()


@pytest.fixture(scope="module")
def ir(trained_run, tmp_path_factory) -> tuple[Path, Path, str]:
    """(the tiny run's best.pt, its OpenVINO export, what the export printed)."""
    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    out = tmp_path_factory.mktemp("openvino") / "tiny.xml"
    return checkpoint, out, export_to(checkpoint, out, "format=openvino")


def test_the_ir_is_fp32_carries_the_card_and_agrees_with_pytorch_at_other_sizes(ir) -> None:
    checkpoint, path, printed = ir
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.bin", "tiny.xml"]  # no temporary left
    # the check ran on the IR too: the ONNX file's two sizes, then the IR's
    assert len(re.findall(r"max \|logits difference\|", printed)) == 4
    model, card = load_trained_model(checkpoint)
    reference = LogitsOnly(model).eval()
    ov = OpenVinoSegmenter(path, "f32")
    assert ov.precision == "float32" and ov.label_names == card.dataset.label_names()
    assert (
        ov.meta["mean"] == pytest.approx(card.dataset.mean)
        and ov.meta["dataset"]["name"] == card.dataset.name
    )
    torch.manual_seed(0)
    for shape in [(1, 3, 45, 97), (3, 3, 72, 40)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = reference(x).numpy()
        got = ov.logits(x.numpy())
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4
    # the fp32 weights stayed fp32 (OpenVINO's save_model would halve them by default)
    assert path.with_suffix(".bin").stat().st_size > 3.5 * sum(p.numel() for p in model.parameters()) * 0.9


def test_evaluate_and_predict_on_model_xml_equal_the_checkpoint(ir, trained_run, tmp_path) -> None:
    checkpoint, path, _ = ir
    results = {}
    for name, source in (("pt", checkpoint), ("ov", path)):
        cfg = compose_config([f"checkpoint={source}", "num_workers=0", "amp=off"], config_name="evaluate")
        with one_thread():
            results[name] = evaluate_checkpoint(cfg, tmp_path / name)
    assert results["ov"]["miou"] == pytest.approx(results["pt"]["miou"], abs=1e-6)
    assert results["ov"]["output_stride"] == results["pt"]["output_stride"]
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (90, 120)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    masks = {}
    for name, source, amp in (("pt", checkpoint, "off"), ("ov", path, "auto")):  # auto: OpenVINO's default
        cfg = compose_config(
            [f"checkpoint={source}", f"input={photos}", f"output={tmp_path / ('p' + name)}", f"amp={amp}"],
            config_name="predict",
        )
        with one_thread():
            masks[name] = [np.asarray(Image.open(p)) for p in predict(cfg, tmp_path / ("p" + name))]
    for a, b in zip(masks["pt"], masks["ov"]):
        assert a.shape == b.shape and (a == b).mean() >= 0.99


def test_settings_the_ir_fixes_and_broken_files_are_one_line(ir, tmp_path) -> None:
    _, path, _ = ir
    for extra, match in (("eval.output_stride=8", "eval.output_stride=8 does not apply to an OpenVINO model"),
                         ("channels_last=true", "channels_last=true does not apply"),
                         ("device=cuda", "device=cuda: OpenVINO models run on the CPU")):  # fmt: skip
        cfg = compose_config([f"checkpoint={path}", extra], config_name="evaluate")
        with pytest.raises(ConfigError, match=match):
            evaluate_checkpoint(cfg, tmp_path)
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(path.read_bytes())
    with pytest.raises(ExportError, match=r"lonely.bin does not exist .*model.xml \+ model.bin"):
        OpenVinoSegmenter(lonely)
    junk = tmp_path / "junk.xml"
    junk.write_text("<net>")
    junk.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(ExportError, match="cannot load model .*junk.xml") as e:
        OpenVinoSegmenter(junk)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"output=.*m.onnx: an OpenVINO model is NAME.xml"):
        export_to(path, tmp_path / "m.onnx", "format=openvino")


def test_int8_is_quantised_by_nncf_and_reports_agreement(trained_run, tmp_path) -> None:
    import openvino as ov

    checkpoint = trained_run[0] / "checkpoints" / "last.pt"
    out = tmp_path / "int8.xml"
    out.write_text("the previous export")
    printed = export_to(checkpoint, out, "format=openvino_int8", "calibration=3")
    assert "calibrated on 3 training images" in printed
    share = float(re.search(r"([\d.]+)% of pixels agree on (\d+) validation images", printed).group(1))
    assert share > 90
    types = {op.get_type_name() for op in ov.Core().read_model(str(out)).get_ops()}
    assert "FakeQuantize" in types  # NNCF's quantisation nodes, which the CPU plugin runs in int8
    int8 = OpenVinoSegmenter(out)
    assert int8.label_names == ["background", "disc", "square", "triangle"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.bin", "int8.xml"]
