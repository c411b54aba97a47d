"""Every writer stopped at a random moment: predict's images, a video, a GeoTIFF, each export format, autolabel and
evaluate's reports, each run as a user runs it and sent SIGTERM (as a scheduler or `timeout` sends it) at a seeded
random moment of its work. Each time, every file at the output is either the one there before or a complete new
one, and no temporary file is left."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import generated_voc
from helpers.processes import ROOT
from PIL import Image

TRIES = 3  # signalled runs per writer (seeded moments)


def complete(path: Path) -> bool:
    """Whether `path` is a whole file of its kind (it opens and reads to its end)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".png", ".jpg"):
            with Image.open(path) as im:
                im.load()
        elif suffix == ".tif":
            import rasterio

            with rasterio.open(path) as src:
                src.read()
        elif suffix == ".mp4":
            import cv2

            capture = cv2.VideoCapture(str(path))
            frames = 0
            while capture.read()[0]:
                frames += 1
            capture.release()
            return frames > 0
        elif suffix == ".onnx":
            import onnx

            onnx.checker.check_model(onnx.load(str(path)))
        elif suffix == ".pt2":
            import torch

            torch.export.load(str(path))
        elif suffix == ".xml":  # an OpenVINO IR: the XML parses, and its .bin holds every constant it names
            import xml.etree.ElementTree as ET

            root = ET.parse(path).getroot()
            ends = [int(d.get("offset")) + int(d.get("size")) for d in root.iter("data") if d.get("offset")]
            return path.with_suffix(".bin").stat().st_size >= max(ends, default=0)
        elif suffix == ".bin":
            return complete(path.with_suffix(".xml"))
        elif suffix == ".json":
            json.loads(path.read_text())
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            load_file(str(path))
        else:  # csv, md, yaml: text ending with its last line
            return path.read_text().endswith("\n")
    except Exception:  # noqa: BLE001 - any failure to read it to its end means it is not whole
        return False
    return True


def outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def first_write(folder: Path, since_ns: int) -> bool:
    """Whether a file under folder was created or changed after since_ns (the writer has begun)."""
    for p in folder.rglob("*") if folder.exists() else ():
        try:
            if p.is_file() and p.stat().st_mtime_ns > since_ns:
                return True
        except FileNotFoundError:  # a temporary file renamed meanwhile
            return True
    return False


def run(args: list[str], out: Path, stop_after: float | None) -> tuple[int, float, float]:
    """(exit status, seconds to the first write at `out`, seconds in all) of `python ARGS` in the repository
    root; with stop_after, SIGTERM that many seconds after its first write."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    started, started_ns = time.monotonic(), time.time_ns()
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    writing = None
    while proc.poll() is None:
        if writing is None and first_write(out, started_ns):
            writing = time.monotonic()
        if writing is not None and stop_after is not None and time.monotonic() - writing >= stop_after:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err[-3000:]
    ended = time.monotonic()
    return proc.returncode, (writing or ended) - started, ended - started


@pytest.fixture(scope="module")
def inputs(trained_run, tmp_path_factory) -> dict[str, Path]:
    """The tiny run's checkpoint, a folder of its photos, a short video and a GeoTIFF scene."""
    import cv2

    run_dir, _, data_dir = trained_run
    tmp = tmp_path_factory.mktemp("writers")
    photos = tmp / "photos"
    photos.mkdir()
    for p in sorted((generated_voc(data_dir) / "JPEGImages").glob("val_*.jpg")):
        (photos / p.name).write_bytes(p.read_bytes())
    clip = tmp / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (56, 40))
    rng = np.random.default_rng(0)
    for _ in range(30):
        writer.write(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    writer.release()
    scene = tmp / "scene.tif"
    rasterio = pytest.importorskip("rasterio")
    profile = {"driver": "GTiff", "height": 600, "width": 900, "count": 3, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": rasterio.Affine(0.5, 0, 500000.0, 0, -0.5, 4100000.0)}  # fmt: skip
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(rng.integers(0, 255, (3, 600, 900), dtype=np.uint8))
    return {"checkpoint": run_dir / "checkpoints" / "best.pt", "photos": photos, "clip": clip, "scene": scene,
            "data_dir": data_dir}  # fmt: skip


WRITERS: dict[str, Callable[[dict[str, Path], Path], list[str]]] = {
    "predict_images": lambda i, out: ["-m", "deeplab.predict", f"checkpoint={i['checkpoint']}", f"input={i['photos']}",
                                      f"output={out}"],
    "video": lambda i, out: ["-m", "deeplab.predict", f"checkpoint={i['checkpoint']}", f"input={i['clip']}",
                             f"output={out}", "save_masks=true"],
    "geotiff": lambda i, out: ["-m", "deeplab.predict", f"checkpoint={i['checkpoint']}", f"input={i['scene']}",
                               f"output={out}", "raster_color=true", "eval.window=32"],
    "autolabel": lambda i, out: ["-m", "deeplab.predict", f"checkpoint={i['checkpoint']}", f"input={i['photos']}",
                                 f"output={out}", "autolabel=true", "overwrite=true"],
    "onnx": lambda i, out: ["-m", "deeplab.export", f"checkpoint={i['checkpoint']}", f"output={out / 'm.onnx'}",
                            "trace_size=[64,80]"],
    "onnx_int8": lambda i, out: ["-m", "deeplab.export", f"checkpoint={i['checkpoint']}", "format=onnx_int8",
                                 f"output={out / 'm_int8.onnx'}", "trace_size=[64,80]", "calibration=4"],
    "openvino_int8": lambda i, out: ["-m", "deeplab.export", f"checkpoint={i['checkpoint']}", "format=openvino_int8",
                                     f"output={out / 'm.xml'}", "trace_size=[64,80]", "calibration=4"],
    "prepare_masks": lambda i, out: ["-m", "deeplab.data.prepare", "masks", "--output", str(out), "experiment=tiny",
                                     f"paths.data_dir={i['data_dir']}"],
    "exported_program": lambda i, out: ["-m", "deeplab.export", f"checkpoint={i['checkpoint']}",
                                        "format=exported_program", f"output={out / 'm.pt2'}", "trace_size=[64,80]"],
    "model_folder": lambda i, out: ["-m", "deeplab.export", f"checkpoint={i['checkpoint']}", "format=hub",
                                    f"output={out / 'model'}"],
    "reports": lambda i, out: ["evaluate.py", f"checkpoint={i['checkpoint']}", f"hydra.run.dir={out}"],
}  # fmt: skip


@pytest.mark.slow  # about 30 processes of a few seconds each
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_writer_stopped_at_any_moment_leaves_the_old_files_or_complete_new_ones(inputs, tmp_path, writer):
    out = tmp_path / "out"
    args = WRITERS[writer](inputs, out) + (
        [] if writer == "reports" else [f"hydra.run.dir={tmp_path / 'hydra'}"]
    )
    status, _, _ = run(args, out, None)
    assert status == 0
    first = outputs(out)
    status, to_write, seconds = run(args, out, None)  # timed when its outputs exist already, as the tries
    assert status == 0
    before = outputs(out)
    assert before and all(complete(out / name) for name in before), before.keys()
    # Files a second run writes the same bytes to must keep them: a partial one (a GeoTIFF of zero tiles still
    # opens) differs. The others (a date in the model card, the ONNX producer's build) must read to their end.
    varying = {name for name, data in before.items() if first.get(name) != data}
    rng = random.Random(writer)
    for _ in range(TRIES):
        # a moment of the writing: after the first file appeared, before the run would end
        status, _, _ = run(args, out, rng.uniform(0.0, 1.0) * (seconds - to_write))
        # 143: stopped by the command (exit_on_user_error); -15: before its handler or after its work, in the
        # imports or the interpreter's shutdown, where nothing is being written
        assert status in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
        after = outputs(out)
        assert not [n for n in after if ".tmp" in n or n.endswith(".commit.json")], after.keys()
        assert after.keys() >= before.keys() - {n for n in before if n.startswith(".hydra")}
        for name, data in after.items():
            assert data == before.get(name) or (name in varying and complete(out / name)), name
        if writer == "model_folder":  # the three files are of one export: the card loads with the weights
            import deeplab

            deeplab.load(out / "model")
