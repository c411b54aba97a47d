"""deeplab.export and predicting with exported models: ONNX Runtime against PyTorch at sizes other than the
traced one, the metadata, predict with checkpoint=FILE.onnx against checkpoint=FILE.pt, and video."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers.configs import compose_config, one_thread
from PIL import Image

from deeplab.config import export_config as export_config_model
from deeplab.deploy.export import LogitsOnly, check_export, export
from deeplab.deploy.onnx_model import METADATA_KEY, OnnxSegmenter
from deeplab.deploy.predict import predict
from deeplab.deploy.restore import load_trained_model
from deeplab.errors import ExportError


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
    # the file was exported in float32: the checkpoint runs in float32 too (amp=auto takes the training's setting)
    for name, source, amp in (("pt", checkpoint, "off"), ("onnx", path, "auto")):
        out = tmp_path / name
        cfg = compose_config(
            [f"checkpoint={source}", f"input={photos}", f"output={out}", f"amp={amp}"], config_name="predict"
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
    # every frame carries the legend of all classes, here beside the 64x48 frames (too small to hold it)
    assert len(frames) == 7 and frames[0].shape[0] == 48 and frames[0].shape[1] > 64
    assert all(f.shape == frames[0].shape for f in frames)
    assert (np.abs(frames[0][:, 64:].astype(int) - frames[-1][:, 64:]) <= 40).all()  # the same legend (mp4v)
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
    from deeplab.deploy.export import export_onnx, metadata
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


# --- the export never replaces its checkpoint, and writes whole files -------------------------------------


def run_entry(entry: str, args: list[str], run_dir: Path, capsys, monkeypatch) -> tuple[int, str]:
    """`python ENTRY ARGS` (a script of the repository root, or `-m MODULE`) run in this process, Hydra's logging
    set-up left out: (exit status, stderr)."""
    import runpy
    import warnings

    from hydra.core.global_hydra import GlobalHydra

    argv = ["entry", *args, f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before
            if entry.endswith(".py"):
                runpy.run_path(str(Path(__file__).resolve().parents[1] / entry), run_name="__main__")
            else:
                runpy.run_module(entry, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


def test_export_refuses_an_output_that_is_its_checkpoint(
    onnx_file, tmp_path: Path, capsys, monkeypatch
) -> None:
    checkpoint = tmp_path / "best.pt"
    shutil.copy(onnx_file[0], checkpoint)
    before = checkpoint.read_bytes()
    (tmp_path / "link.pt").symlink_to(checkpoint)
    os.link(checkpoint, tmp_path / "hard.pt")
    # The checkpoint itself, a symbolic link to it and a hard link (another name of the same file).
    for output in (checkpoint, tmp_path / "link.pt", tmp_path / "hard.pt"):
        args = [f"checkpoint={checkpoint}", f"output={output}"]
        code, err = run_entry("deeplab.export", args, tmp_path / "run", capsys, monkeypatch)
        assert code == 2, err
        assert err.startswith(f"error: output={output} is the checkpoint being exported")
        assert err.count("\n") == 1 and "output=" in err.split("e.g.")[1]
    assert checkpoint.read_bytes() == before


def test_export_refuses_the_checkpoint_a_run_folder_names(onnx_file, tmp_path: Path) -> None:
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    shutil.copy(onnx_file[0], best)
    with pytest.raises(ExportError, match=r"output=.*best.pt is the checkpoint being exported"):
        export(export_config(tmp_path / "run", best), tmp_path)
    assert best.read_bytes() == onnx_file[0].read_bytes()


def test_a_failed_export_write_leaves_the_previous_file(onnx_file, tmp_path: Path, monkeypatch) -> None:
    import onnx

    checkpoint, good = onnx_file
    out = tmp_path / "m.onnx"
    shutil.copy(good, out)
    before = out.read_bytes()

    def save_half_then_fail(model, f, *args, **kwargs) -> None:
        Path(f).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", save_half_then_fail)
    with one_thread(), pytest.raises(ExportError, match=r"could not write .*m.onnx: No space left on device"):
        export(export_config(checkpoint, out), tmp_path)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --- the metadata is checked when a file is loaded --------------------------------------------------------


def with_metadata(source: Path, path: Path, **changes: object) -> Path:
    """A copy of an exported file whose deeplab metadata has `changes` (text=...: that exact text)."""
    import onnx

    model = onnx.load(str(source))
    (entry,) = [p for p in model.metadata_props if p.key == METADATA_KEY]
    meta = json.loads(entry.value)
    meta.update({k: v for k, v in changes.items() if k != "text"})
    meta = {k: v for k, v in meta.items() if v is not None}
    entry.value = str(changes["text"]) if "text" in changes else json.dumps(meta)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"text": "{'class_names': ['a']"}, r"deeplab metadata is not valid JSON \(Expecting"),
        ({"text": "[1, 2]"}, "deeplab metadata is list, not an object"),
        ({"class_names": None}, r"metadata's class_names: field required"),
        ({"num_classes": "four"}, r"metadata's num_classes: input should be a valid integer"),
        (
            {"palette": [[0, 0, 300]] * 4},
            r"metadata's palette.0.2: input should be less than or equal to 255",
        ),
        ({"class_names": ["background", "disc", "square"]}, "lists 3 class names but num_classes 4 needs 4"),
        ({"mean": [0.5] * 2}, "has 2 mean values but in_channels 3"),
        (
            {"in_channels": 4, "mean": [0.5] * 4, "std": [0.2] * 4},
            r"in_channels 4 but the graph's input has 3 ",
        ),
        (
            {"num_classes": 5, "class_names": list("abcde")},
            r"num_classes 5 but the graph's logits has 4 channels",
        ),
    ],
)
def test_bad_metadata_is_one_line(onnx_file, tmp_path: Path, changes: dict, message: str) -> None:
    path = with_metadata(onnx_file[1], tmp_path / "bad.onnx", **changes)
    with pytest.raises(ExportError, match=message) as info:
        OnnxSegmenter(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).endswith("re-export it with `python -m deeplab.export checkpoint=...`")


def test_an_older_file_without_the_class_count_in_its_graph_is_checked_by_a_run(
    onnx_file, tmp_path: Path
) -> None:
    import onnx

    model = onnx.load(str(onnx_file[1]))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"  # as the tracer left it
    onnx.save(model, str(tmp_path / "old.onnx"))
    assert OnnxSegmenter(tmp_path / "old.onnx").meta["num_classes"] == 4
    bad = with_metadata(
        tmp_path / "old.onnx", tmp_path / "bad.onnx", num_classes=5, class_names=list("abcde")
    )
    with pytest.raises(ExportError, match=r"num_classes 5 but the graph's logits has 4 channels"):
        OnnxSegmenter(bad)


def test_predict_names_the_file_for_bad_metadata(onnx_file, tmp_path: Path, capsys, monkeypatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(photos / "a.png")
    for changes, message in (
        ({"text": "not json"}, "deeplab metadata is not valid JSON"),
        (
            {"in_channels": 4, "mean": [0.5] * 4, "std": [0.2] * 4},
            "in_channels 4 but the graph's input has 3",
        ),
    ):
        path = with_metadata(onnx_file[1], tmp_path / "bad.onnx", **changes)
        args = [f"checkpoint={path}", f"input={photos}", f"output={tmp_path / 'out'}"]
        code, err = run_entry("deeplab.predict", args, tmp_path / "run", capsys, monkeypatch)
        assert (
            code == 2 and err.startswith(f"error: model {path}: ") and message in err and err.count("\n") == 1
        )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- evaluate.py scores an ONNX file as it scores the checkpoint ------------------------------------------


@pytest.mark.parametrize(
    "settings", [[], ["eval.scales=[0.75,1.0]", "eval.flip=true"]], ids=["whole", "ms_flip"]
)
def test_evaluating_the_onnx_file_equals_evaluating_the_checkpoint(
    onnx_file, tmp_path: Path, settings
) -> None:
    from deeplab.deploy.evaluate import evaluate_checkpoint

    results, files = {}, {}
    for name, source in zip(("pt", "onnx"), onnx_file):
        run_dir = tmp_path / name
        run_dir.mkdir()
        cfg = compose_config([f"checkpoint={source}", "num_workers=0", *settings], config_name="evaluate")
        with one_thread():
            results[name] = evaluate_checkpoint(cfg, run_dir)
        files[name] = sorted(p.name for p in run_dir.iterdir())
        written = json.loads((run_dir / "metrics.json").read_text())
        assert written["checkpoint"] == str(source) and written["num_images"] == 4
    pt, ox = results["pt"], results["onnx"]
    assert files["pt"] == files["onnx"] and "metrics.json" in files["pt"]
    assert ox["miou"] == pytest.approx(pt["miou"], abs=1e-3)
    assert ox["pixel_acc"] == pytest.approx(pt["pixel_acc"], abs=1e-3)
    assert (ox["flip"], ox["scales"], ox["output_stride"]) == (pt["flip"], pt["scales"], pt["output_stride"])
    a, b = np.array(pt["confusion_matrix"]), np.array(ox["confusion_matrix"])
    assert a.sum() == b.sum() > 0.8 * 4 * 40 * 56  # the pixels of the 4 val images (the 255 ones left out)
    assert np.abs(a - b).sum() <= 0.001 * a.sum()  # argmax ties may flip a few pixels


def test_evaluate_entry_point_on_an_onnx_file(onnx_file, tmp_path: Path, capsys, monkeypatch) -> None:
    path = onnx_file[1]
    # The validation set the metadata records, or the one dataset.* points to: here a fresh copy generated
    # at another root.
    elsewhere = tmp_path / "elsewhere"
    code, err = run_entry("evaluate.py", [f"checkpoint={path}", f"dataset.root={elsewhere}", "num_workers=0"],
                         tmp_path / "run", capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["num_images"] == 4
    assert len(list(elsewhere.rglob("*.png"))) >= 8  # the override was used: the images were made there
    code, err = run_entry("evaluate.py", [f"checkpoint={path}", "eval.output_stride=8"], tmp_path / "run2", capsys,
                          monkeypatch)  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(
        "error: eval.output_stride=8 does not apply to an ONNX model (export it at that stride"
    )
    old = with_metadata(path, tmp_path / "old.onnx", dataset=None)
    code, err = run_entry("evaluate.py", [f"checkpoint={old}"], tmp_path / "run3", capsys, monkeypatch)
    assert code == 2 and "does not record the dataset it was trained on" in err and err.count("\n") == 1


def test_evaluate_settings_of_an_onnx_file(onnx_file, tmp_path: Path) -> None:
    """What the graph fixes is refused (by evaluate.py and deeplab.deploy.predict); device chooses ONNX Runtime's
    execution provider."""
    from deeplab.deploy.evaluate import evaluate_checkpoint
    from deeplab.deploy.onnx_model import onnx_providers
    from deeplab.errors import ConfigError

    for setting, message in (
        ("amp=bf16", r"amp=bf16 does not apply to an ONNX model \(the graph runs in the precision"),
        ("channels_last=true", r"channels_last=true does not apply to an ONNX model"),
        ("device=mps", r"device=mps: this ONNX Runtime runs on .*CPUExecutionProvider"),
    ):
        cfg = compose_config([f"checkpoint={onnx_file[1]}", setting], config_name="evaluate")
        with pytest.raises(ConfigError, match=message):
            evaluate_checkpoint(cfg, tmp_path)
    # deeplab.deploy.predict applies the same rules.
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(photos / "a.png")
    for setting, message in (
        ("eval.output_stride=8", "eval.output_stride=8 does not apply"),
        ("amp=fp16", "amp=fp16"),
    ):
        cfg = compose_config(
            [f"checkpoint={onnx_file[1]}", f"input={photos}", f"output={tmp_path / 'out'}", setting],
            config_name="predict",
        )
        with pytest.raises(ConfigError, match=message):
            predict(cfg, tmp_path / "out")
    assert onnx_providers("auto") is None  # CUDA when onnxruntime-gpu offers it, else the CPU
    session = OnnxSegmenter(onnx_file[1], providers=onnx_providers("cpu")).session
    assert session.get_providers() == ["CPUExecutionProvider"]
