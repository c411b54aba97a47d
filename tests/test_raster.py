"""predict on a GeoTIFF (deeplab.deploy.raster, rasterio): read in overlapping windows blended as slide evaluation
blends them, written as a tiled, compressed GeoTIFF of class ids with the input's CRS and transform; memory
bounded by the window, not the scene."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.configs import compose_config, one_thread

rasterio = pytest.importorskip("rasterio")
from rasterio.windows import Window  # noqa: E402

from deeplab.config import predict_config  # noqa: E402
from deeplab.deploy.predict import predict  # noqa: E402
from deeplab.deploy.segmenter import load_segmenter  # noqa: E402
from deeplab.errors import ConfigError, DatasetError  # noqa: E402
from deeplab.models.inference import predict_probs  # noqa: E402

CRS = "EPSG:32633"
TRANSFORM = rasterio.Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4100000.0)  # UTM 33N, 0.5 m pixels


def scene_block(y0: int, x0: int, rows: int, cols: int) -> np.ndarray:
    """(3, rows, cols) uint8 of a generated scene from (y0, x0): discs and stripes over noise (seeded by the
    block's corner)."""
    y, x = np.mgrid[y0 : y0 + rows, x0 : x0 + cols]
    rng = np.random.default_rng(y0 * 100_003 + x0)
    disc = ((y % 97 - 48) ** 2 + (x % 131 - 65) ** 2) < 30**2
    base = np.stack([disc * 200 + 20, (x // 40 % 2) * 150 + 40, (y // 30 % 2) * 120 + 60]).astype(np.int16)
    return np.clip(base + rng.integers(-25, 26, base.shape), 0, 255).astype(np.uint8)


def write_scene(path: Path, height: int, width: int, rows_per_write: int = 512) -> None:
    """A 3-band uint8 GeoTIFF written in strips (never whole in memory)."""
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8", "crs": CRS,
               "transform": TRANSFORM, "tiled": True, "blockxsize": 256, "blockysize": 256}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, height, rows_per_write):
            rows = min(rows_per_write, height - y0)
            dst.write(scene_block(y0, 0, rows, width), window=Window(0, y0, width, rows))


def config(checkpoint: Path, source: Path, out: Path, *extra: str):
    return compose_config([f"checkpoint={checkpoint}", f"input={source}", f"output={out}", *extra], "predict")


def slide_ids(cfg, image: np.ndarray) -> np.ndarray:
    """What slide evaluation (deeplab.models.inference) predicts for a (C, H, W) uint8 image held in memory."""
    seg = load_segmenter(predict_config(cfg))
    x = torch.from_numpy(image).unsqueeze(0)
    with torch.no_grad():
        probs = predict_probs(seg.model, seg.normalize(x), mode="slide", window=cfg.eval.window,
                              overlap=cfg.eval.overlap)  # fmt: skip
    return probs.argmax(1)[0].numpy().astype(np.uint8)


@pytest.mark.parametrize(
    ("window", "height", "width"),
    [(96, 240, 320), (32, 100, 600)],  # one stripe; three stripes of 256 columns, windows computed twice
)
def test_a_geotiff_is_predicted_in_windows_as_slide_evaluation(trained_run, tmp_path, window, height, width):
    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    scene = tmp_path / "scene.tif"
    write_scene(scene, height, width)
    cfg = config(
        checkpoint, scene, tmp_path / "out", f"eval.window={window}", "eval.overlap=0.33", "raster_color=true"
    )
    with one_thread():
        written = predict(cfg, tmp_path / "out")
        expected = slide_ids(cfg, scene_block(0, 0, height, width))
    assert written == [tmp_path / "out" / "scene.tif"]
    with rasterio.open(written[0]) as out:
        assert (out.height, out.width, out.count, out.dtypes[0]) == (height, width, 1, "uint8")
        assert out.crs.to_string() == CRS and out.transform == TRANSFORM
        assert out.profile["tiled"] and out.compression is not None
        ids = out.read(1)
        colormap = out.colormap(1)
    assert np.array_equal(ids, expected)  # every pixel, overlaps included
    assert len(np.unique(ids)) > 1
    with rasterio.open(tmp_path / "out" / "scene_color.tif") as color:
        assert color.crs.to_string() == CRS and color.count == 3
        palette = np.array([colormap[i][:3] for i in range(4)], dtype=np.uint8)
        assert np.array_equal(color.read().transpose(1, 2, 0), palette[ids])
    with pytest.raises(ConfigError, match=r"^eval.scales/eval.flip: a GeoTIFF is predicted in windows"):
        predict(config(checkpoint, scene, tmp_path / "flip", "eval.flip=true"), tmp_path / "flip")


MEMORY_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
import torch
torch.set_num_threads(1)  # as the test's own slide evaluation: the same arithmetic
from helpers.configs import compose_config
from deeplab.deploy.predict import predict  # noqa: E402
checkpoint, small, short, big, out = sys.argv[1:6]
def status_mb(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024
def growth(step):
    # Linux: writing 5 to clear_refs resets the peak (VmHWM) to today's RSS, so each step's peak is its own
    # and not hidden under an earlier, higher one.
    open("/proc/self/clear_refs", "w").write("5")
    start = status_mb("VmRSS")
    step()
    return status_mb("VmHWM") - start
def run(source, folder):
    cfg = compose_config([f"checkpoint={checkpoint}", f"input={source}", f"output={folder}", "eval.window=512"], "predict")
    predict(cfg, Path(folder))
growth(lambda: run(small, out + "/small"))  # imports, model, allocator warmed up
short_mb = growth(lambda: run(short, out + "/short"))
big_mb = growth(lambda: run(big, out + "/big"))
# The control: the scene read whole and as float32, as whole-image inference would hold it.
import rasterio
def read_whole():
    with rasterio.open(big) as src:
        scene = src.read().astype("float32")
whole_mb = growth(read_whole)
print(json.dumps({"short_mb": short_mb, "big_mb": big_mb, "whole_mb": whole_mb}))
"""


@pytest.mark.slow  # about a minute: 6000x1536 and 6000x4000 scenes through windows of 512
@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="measures peak RSS through Linux's /proc"
)
def test_a_6000x4000_geotiff_keeps_memory_bounded_by_the_window(trained_run, tmp_path) -> None:
    """Memory is bounded by the window (stripes of 8 windows swept top to bottom, GDAL's capped block cache):
    predicting stays under the scene's float32 size, which reading it whole exceeds, and a scene 2.6 times
    as tall costs far less than its extra rows read whole."""
    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    width, short_height, height = 6000, 1536, 4000
    small, short, big = tmp_path / "small.tif", tmp_path / "short.tif", tmp_path / "scene.tif"
    write_scene(small, 600, 600)
    write_scene(short, short_height, width)
    write_scene(big, height, width)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(checkpoint), str(small), str(short), str(big),
         str(tmp_path / "out")],
        cwd=root, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    memory = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"peak RSS over the RSS at the start: +{memory['short_mb']:.0f} MB predicting {width}x{short_height}, "
        f"+{memory['big_mb']:.0f} MB predicting {width}x{height}, +{memory['whole_mb']:.0f} MB reading "
        f"{width}x{height} whole as float32"
    )
    extra_rows_mb = (height - short_height) * width * 3 * 4 / 2**20  # the extra rows as float32: 169 MB
    assert memory["big_mb"] - memory["short_mb"] < 0.5 * extra_rows_mb
    whole_scene_mb = height * width * 3 * 4 / 2**20  # the scene as float32: 275 MB
    assert memory["big_mb"] < whole_scene_mb < memory["whole_mb"]  # the latter: the measurement's control
    out = tmp_path / "out" / "big" / "scene.tif"
    with rasterio.open(big) as src, rasterio.open(out) as dst:
        assert (dst.height, dst.width) == (src.height, src.width)
        assert dst.crs == src.crs and dst.transform == src.transform
        # A crop from the scene's corner, 3 x 3 windows of 512 at step 343: the pixels that no window beyond
        # the crop reaches are those slide evaluation of the crop alone gives.
        size, step = 512 + 2 * 343, 343
        ids = dst.read(1, window=Window(0, 0, size, size))
        # An interior crop starting on the window grid (rows 3 steps in, columns 11), across the boundary of
        # the first two stripes (column 4096).
        y0, x0 = 3 * step, 11 * step
        inner = dst.read(1, window=Window(x0, y0, size, size))
        corner_pixels = src.read(window=Window(0, 0, size, size))  # (3, size, size) uint8
        inner_pixels = src.read(window=Window(x0, y0, size, size))
    cfg = config(checkpoint, big, tmp_path / "x", "eval.window=512")
    with one_thread():
        corner = slide_ids(cfg, corner_pixels)
        middle = slide_ids(cfg, inner_pixels)
    reach = 3 * step  # the next window of the scene starts there
    assert np.array_equal(ids[:reach, :reach], corner[:reach, :reach])
    # Inside the interior crop, the scene's windows that start before it reach 512 - 343 rows into it.
    lo = 512 - step
    assert np.array_equal(inner[lo:reach, lo:reach], middle[lo:reach, lo:reach])


def test_a_refused_or_stopped_scene_leaves_the_previous_outputs_and_no_partial_raster(
    trained_run, tmp_path, monkeypatch
) -> None:
    """A float32 scene is refused before anything appears at the output; a run stopped mid-scene (Ctrl-C,
    SIGTERM through deeplab.cli) over a folder holding a complete scene.tif leaves that file as it was."""
    import deeplab.deploy.raster as raster

    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    f32 = tmp_path / "f32.tif"
    profile = {"driver": "GTiff", "height": 40, "width": 40, "count": 3, "dtype": "float32", "crs": CRS,
               "transform": TRANSFORM}  # fmt: skip
    with rasterio.open(f32, "w", **profile) as dst:
        dst.write(np.random.default_rng(0).random((3, 40, 40), dtype=np.float32))
    out = tmp_path / "out"
    with one_thread(), pytest.raises(DatasetError):
        predict(config(checkpoint, f32, out, "eval.window=32", "raster_color=true"), out)
    assert not out.exists() or list(out.iterdir()) == []

    scene = tmp_path / "scene.tif"
    write_scene(scene, 64, 300)
    cfg = config(checkpoint, scene, out, "eval.window=32", "raster_color=true")
    with one_thread():
        predict(cfg, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["scene.tif", "scene_color.tif"]
    calls = []

    def stopped_after_one_stripe(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return sweep(*args, **kwargs)

    sweep = raster.sweep_stripe
    monkeypatch.setattr(raster, "sweep_stripe", stopped_after_one_stripe)
    with one_thread(), pytest.raises(KeyboardInterrupt):
        predict(cfg, out)
    assert calls and {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file either


def test_a_truncated_geotiff_is_one_line_naming_it(trained_run, tmp_path) -> None:
    scene = tmp_path / "scene.tif"
    write_scene(scene, 256, 256)
    scene.write_bytes(scene.read_bytes()[: scene.stat().st_size // 2])  # a copy that stopped half-way
    out = tmp_path / "out"
    cfg = config(trained_run[0] / "checkpoints" / "best.pt", scene, out, "eval.window=64")
    with (
        one_thread(),
        pytest.raises(DatasetError, match=r"^GeoTIFF .*scene.tif cannot be read \(.*truncated") as e,
    ):
        predict(cfg, out)
    assert "\n" not in str(e.value) and (not out.exists() or list(out.iterdir()) == [])


def test_nodata_stays_nodata(trained_run, tmp_path) -> None:
    """A scene with nodata (0) and a band of it: those pixels are the output's nodata (255) in the ids, and
    masked in the colour raster; the others are predicted as without nodata."""
    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    scene = tmp_path / "scene.tif"
    pixels = scene_block(0, 0, 96, 128)
    pixels[:, 40:60, :] = 0  # a strip outside the footprint
    profile = {"driver": "GTiff", "height": 96, "width": 128, "count": 3, "dtype": "uint8", "crs": CRS,
               "transform": TRANSFORM, "nodata": 0}  # fmt: skip
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(pixels)
    out = tmp_path / "out"
    cfg = config(checkpoint, scene, out, "eval.window=64", "raster_color=true")
    with one_thread():
        predict(cfg, out)
        expected = slide_ids(cfg, pixels)
    with rasterio.open(out / "scene.tif") as ids_file:
        assert ids_file.nodata == 255
        ids = ids_file.read(1)
    assert (ids[40:60] == 255).all() and (ids[:40] < 4).all() and (ids[60:] < 4).all()
    assert np.array_equal(ids[:40], expected[:40]) and np.array_equal(ids[60:], expected[60:])
    with rasterio.open(out / "scene_color.tif") as color:
        mask = color.dataset_mask()
    assert (mask[40:60] == 0).all() and (mask[:40] == 255).all()
