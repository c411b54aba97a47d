"""deeplab.export and predicting with exported models: ONNX Runtime against PyTorch at sizes other than the
traced one, the metadata, predict with checkpoint=FILE.onnx against checkpoint=FILE.pt, and video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import compose_config, one_thread
from PIL import Image

from deeplab.config import export_config as export_config_model
from deeplab.errors import ExportError
from deeplab.export import LogitsOnly, check_export, export
from deeplab.onnx_model import OnnxSegmenter
from deeplab.predict import predict
from deeplab.restore import load_trained_model


def export_config(checkpoint: Path, output: Path, *extra: str):
    return compose_config(
        [f"checkpoint={checkpoint}", f"output={output}", "trace_size=[64,80]", *extra], config_name="export"
    )


@pytest.fixture(scope="module")
def onnx_file(trained_run, tmp_path_factory) -> tuple[Path, Path]:
    """(the tiny run's best.pt, its ONNX export)."""
    run_dir, _, _ = trained_run
    checkpoint = run_dir / "checkpoints" / "best.pt"
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    with one_thread():
        export(export_config(checkpoint, out), out.parent)
    return checkpoint, out


def test_onnx_runtime_agrees_with_pytorch_at_other_sizes_and_batch_2(onnx_file) -> None:
    checkpoint, path = onnx_file
    model, cfg = load_trained_model(checkpoint)
    reference = LogitsOnly(model).eval()
    session = OnnxSegmenter(path)
    torch.manual_seed(0)
    for shape in [(1, 3, 45, 97), (2, 3, 72, 40)]:  # traced at 64x80, batch 2
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = reference(x).numpy()
        got = session.logits(x.numpy())
        assert got.shape == expected.shape == (shape[0], 4, *shape[2:])
        assert np.abs(got - expected).max() <= 1e-4
    meta = session.meta
    assert meta["class_names"] == ["background", "disc", "square", "triangle"] == cfg.dataset.label_names()
    assert meta["mean"] == pytest.approx(cfg.dataset.mean) and meta["std"] == pytest.approx(cfg.dataset.std)
    assert meta["in_channels"] == 3 and len(meta["palette"]) == 4


@pytest.mark.slow  # torch.export takes about 10 s for the tiny model
def test_an_exported_program_agrees_with_pytorch(trained_run, tmp_path: Path, capsys) -> None:
    run_dir, _, _ = trained_run
    checkpoint = run_dir / "checkpoints" / "last.pt"
    with one_thread():
        path = export(export_config(checkpoint, tmp_path / "m.pt2", "format=exported_program"), tmp_path)
    assert path.suffix == ".pt2"
    out = capsys.readouterr().out
    assert "check 2x3x" in out and "max |logits difference|" in out  # the command checked its own file
    module = torch.export.load(str(path)).module()
    model, _ = load_trained_model(checkpoint)
    x = torch.randn(2, 3, 50, 66)
    with torch.no_grad():
        assert (module(x) - model(x)["out"]).abs().max() <= 1e-4


def test_a_disagreeing_export_fails_in_one_line(onnx_file) -> None:
    checkpoint, path = onnx_file
    model, _ = load_trained_model(checkpoint)
    cfg = export_config_model(export_config(checkpoint, path, "tolerance=1e-30"))
    with pytest.raises(
        ExportError, match=r"disagrees with PyTorch: max \|logits difference\| .* > tolerance 1e-30"
    ):
        check_export(cfg, LogitsOnly(model).eval(), path, 3)


@pytest.mark.slow  # the torch.export-based exporter takes about 15 s for the tiny model
def test_the_dynamo_exporter_agrees_too(trained_run, tmp_path: Path) -> None:
    run_dir, _, _ = trained_run
    cfg = export_config(run_dir / "checkpoints" / "best.pt", tmp_path / "m.onnx", "exporter=dynamo")
    with one_thread():
        path = export(cfg, tmp_path)  # checked against PyTorch with the default tolerance 1e-3
    assert OnnxSegmenter(path).meta["num_classes"] == 4


def test_predict_with_the_onnx_file_equals_predict_with_the_checkpoint(onnx_file, tmp_path: Path) -> None:
    checkpoint, path = onnx_file
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (61, 33), (90, 120)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    outputs = {}
    for name, source in (("pt", checkpoint), ("onnx", path)):
        out = tmp_path / name
        cfg = compose_config(
            [f"checkpoint={source}", f"input={photos}", f"output={out}"], config_name="predict"
        )
        with one_thread():
            outputs[name] = predict(cfg, out)
        assert sorted(p.name for p in out.iterdir()) == sorted(
            f"{i}{s}" for i in range(3) for s in (".png", "_color.png", "_overlay.jpg")
        )
    for a, b in zip(outputs["pt"], outputs["onnx"]):
        ids_a, ids_b = np.asarray(Image.open(a)), np.asarray(Image.open(b))
        assert ids_a.shape == ids_b.shape
        assert (ids_a != ids_b).mean() < 0.001


def write_video(path: Path, frames: int, size: tuple[int, int]) -> None:
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    for k in range(frames):
        frame = np.full((h, w, 3), 40, dtype=np.uint8)
        cv2.circle(frame, (10 + 4 * k, h // 2), 8, (0, 200, 255), -1)
        writer.write(frame)
    writer.release()


def test_a_video_gives_an_overlay_video_and_masks_per_frame(onnx_file, tmp_path: Path) -> None:
    checkpoint, _ = onnx_file
    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=7, size=(48, 64))
    out = tmp_path / "out"
    cfg = compose_config(
        [f"checkpoint={checkpoint}", f"input={clip}", f"output={out}", "save_masks=true"],
        config_name="predict",
    )
    with one_thread():
        (video,) = predict(cfg, out)
    assert video == out / "clip_overlay.mp4"
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 7 and frames[0].shape == (48, 64, 3)
    masks = sorted((out / "clip").glob("*.png"))
    assert [m.name for m in masks] == [f"{k:06d}.png" for k in range(7)]
    assert np.asarray(Image.open(masks[0])).shape == (48, 64)


def test_onnx_mistakes_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"model .*missing.onnx does not exist; export one with"):
        OnnxSegmenter(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match=r"cannot load model .*junk.onnx"):
        OnnxSegmenter(tmp_path / "junk.onnx")


@pytest.mark.slow  # a few seconds per model
@pytest.mark.parametrize("head", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize(
    "backbone", ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "xception65", "timm"]
)
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_every_backbone_and_head_exports(backbone: str, head: str, exporter: str, tmp_path: Path) -> None:
    from deeplab.export import export_onnx, metadata
    from deeplab.models import build_model

    extra = ["backbone.model=efficientnet_b0"] if backbone == "timm" else []
    cfg = compose_config([f"backbone={backbone}", f"model={head}", "backbone.pretrained=false", *extra])
    from deeplab.config import train_config

    cfg = train_config(cfg)
    torch.manual_seed(0)
    wrapper = LogitsOnly(build_model(cfg)).eval()
    path = tmp_path / "m.onnx"
    with one_thread():
        export_onnx(wrapper, torch.randn(2, 3, 96, 128), path, 18, metadata(cfg), exporter)
    session = OnnxSegmenter(path)
    x = torch.randn(1, 3, 81, 145)
    with torch.no_grad():
        assert np.abs(session.logits(x.numpy()) - wrapper(x).numpy()).max() <= 1e-3


def test_export_of_a_missing_checkpoint_names_it(tmp_path: Path) -> None:
    from deeplab.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"none.pt"):
        export(export_config(tmp_path / "none.pt", tmp_path / "m.onnx"), tmp_path)
