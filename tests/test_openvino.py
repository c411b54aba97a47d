"""format=openvino and openvino_int8: OpenVINO's IR with the model card in its runtime info, checked against
PyTorch at other sizes, scored by evaluate.py and run by predict like the checkpoint; NNCF's INT8.

OpenVINO runs only in the processes these tests start (the commands themselves, and one small script): a test
process that has run OpenVINO's CPU plugin was seen to crash later, when another test signals itself."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import compose_config, one_thread
from helpers.processes import run_cli
from PIL import Image

from deeplab.deploy.openvino_model import openvino_run_settings
from deeplab.errors import ConfigError

if importlib.util.find_spec("openvino") is None:
    pytest.skip("needs openvino", allow_module_level=True)

# Run in a process of its own: the IR against PyTorch at two other sizes, and how broken files are refused.
CHECK = """
import json, sys
import numpy as np, torch
from deeplab.deploy.export import LogitsOnly
from deeplab.deploy.openvino_model import OpenVinoSegmenter
from deeplab.deploy.restore import load_trained_model
from deeplab.errors import ExportError
checkpoint, xml, lonely, junk = sys.argv[1:5]
model, card = load_trained_model(checkpoint)
reference = LogitsOnly(model).eval()
ov = OpenVinoSegmenter(xml, "f32")
torch.manual_seed(0)
worst = 0.0
for shape in [(1, 3, 45, 97), (3, 3, 72, 40)]:
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = reference(x).numpy()
    got = ov.logits(x.numpy())
    assert got.shape == expected.shape, (got.shape, expected.shape)
    worst = max(worst, float(np.abs(got - expected).max()))
errors = []
for path in (lonely, junk):
    try:
        OpenVinoSegmenter(path)
    except ExportError as e:
        errors.append(str(e))
print(json.dumps({"worst": worst, "precision": ov.precision, "labels": ov.label_names, "meta": ov.meta,
                  "params": sum(p.numel() for p in model.parameters()), "errors": errors}))
"""


def export_cli(checkpoint: Path, out: Path, *extra: str) -> str:
    proc = run_cli("-m", "deeplab.export", f"checkpoint={checkpoint}", f"output={out}", "trace_size=[64,80]",
                   f"hydra.run.dir={out.parent / 'export_run'}", *extra)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def ir(trained_run, tmp_path_factory) -> tuple[Path, Path, str]:
    """(the tiny run's best.pt, its OpenVINO export, what the export printed)."""
    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    out = tmp_path_factory.mktemp("openvino") / "tiny.xml"
    return checkpoint, out, export_cli(checkpoint, out, "format=openvino")


def test_the_ir_is_fp32_carries_the_card_and_agrees_with_pytorch_at_other_sizes(ir, tmp_path) -> None:
    checkpoint, path, printed = ir
    assert {p.name for p in path.parent.iterdir()} >= {"tiny.bin", "tiny.xml"}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    # the check ran on the IR too: the ONNX file's two sizes, then the IR's
    assert len(re.findall(r"max \|logits difference\|", printed)) == 4
    lonely = tmp_path / "lonely.xml"
    shutil.copy(path, lonely)
    junk = tmp_path / "junk.xml"
    junk.write_text("<net>")
    junk.with_suffix(".bin").write_bytes(b"")
    proc = run_cli("-c", CHECK, str(checkpoint), str(path), str(lonely), str(junk))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["worst"] <= 1e-4 and out["precision"] == "float32"
    assert (
        out["labels"] == ["background", "disc", "square", "triangle"]
        and out["meta"]["dataset"]["name"] == "synthetic"
    )
    # the fp32 weights stayed fp32 (OpenVINO's save_model would halve them by default)
    assert path.with_suffix(".bin").stat().st_size > 3.5 * out["params"]
    lonely_error, junk_error = out["errors"]
    assert "lonely.bin does not exist" in lonely_error and "model.xml + model.bin" in lonely_error
    assert junk_error.startswith(f"cannot load model {junk}") and "\n" not in junk_error


def test_evaluate_and_predict_on_model_xml_equal_the_checkpoint(ir, tmp_path) -> None:
    from deeplab.deploy.evaluate import evaluate_checkpoint
    from deeplab.deploy.predict import predict

    checkpoint, path, _ = ir
    with one_thread():
        pt = evaluate_checkpoint(
            compose_config([f"checkpoint={checkpoint}", "num_workers=0", "amp=off"], config_name="evaluate"),
            tmp_path / "pt",
        )  # fmt: skip
    proc = run_cli(
        "evaluate.py", f"checkpoint={path}", "num_workers=0", "amp=off", f"hydra.run.dir={tmp_path / 'ov'}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ov = json.loads((tmp_path / "ov" / "metrics.json").read_text())
    assert ov["miou"] == pytest.approx(pt["miou"], abs=1e-6) and ov["output_stride"] == pt["output_stride"]
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (90, 120)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    cfg = compose_config(
        [f"checkpoint={checkpoint}", f"input={photos}", f"output={tmp_path / 'ppt'}", "amp=off"],
        config_name="predict",
    )
    with one_thread():
        written = predict(cfg, tmp_path / "ppt")
    # amp=auto: OpenVINO's default precision for this CPU (bf16 on AMX machines)
    proc = run_cli("-m", "deeplab.predict", f"checkpoint={path}", f"input={photos}", f"output={tmp_path / 'pov'}",
                   f"hydra.run.dir={tmp_path / 'pov_run'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for p in written:
        a, b = np.asarray(Image.open(p)), np.asarray(Image.open(tmp_path / "pov" / p.name))
        assert a.shape == b.shape and (a == b).mean() >= 0.99


def test_settings_the_ir_fixes_are_one_line(ir, tmp_path) -> None:
    _, path, _ = ir
    for args, match in (((8, "auto", "auto", "cpu"), "eval.output_stride=8 does not apply to an OpenVINO model"),
                        ((None, "auto", True, "cpu"), "channels_last=true does not apply"),
                        ((None, "auto", "auto", "cuda"), "device=cuda: OpenVINO models run on the CPU")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            openvino_run_settings(*args)
    assert [openvino_run_settings(None, a, "auto", "auto") for a in ("auto", "off", "bf16")] == [
        None,
        "f32",
        "bf16",
    ]
    proc = run_cli(
        "evaluate.py", f"checkpoint={path}", "eval.output_stride=8", f"hydra.run.dir={tmp_path / 'e'}"
    )
    assert proc.returncode == 2 and proc.stderr.startswith(
        "error: eval.output_stride=8 does not apply to an OpenVINO"
    )
    with pytest.raises(ConfigError, match=r"output=.*m.onnx: an OpenVINO model is NAME.xml"):
        from deeplab.deploy.export import export

        export(compose_config([f"checkpoint={path}", f"output={tmp_path / 'm.onnx'}", "format=openvino"],
                              config_name="export"), tmp_path)  # fmt: skip


def test_int8_is_quantised_by_nncf_and_reports_agreement(trained_run, tmp_path) -> None:
    checkpoint = trained_run[0] / "checkpoints" / "last.pt"
    out = tmp_path / "int8.xml"
    out.write_text("the previous export")
    printed = export_cli(checkpoint, out, "format=openvino_int8", "calibration=3")
    assert "calibrated on 3 training images" in printed
    share = float(re.search(r"([\d.]+)% of pixels agree on (\d+) validation images", printed).group(1))
    assert share > 90
    assert 'type="FakeQuantize"' in out.read_text()  # NNCF's quantisation nodes, which the CPU runs in int8
    assert "INFO:nncf" not in printed  # NNCF's own log goes through logging, not to stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".xml", ".bin")) == [
        "int8.bin",
        "int8.xml",
    ]
