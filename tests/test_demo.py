"""python -m deeplab.demo: the page's answer equals predict's drawing. The fast test calls the page's function;
the slow one opens the page in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium),
uploads an image and compares the overlay the page shows with predict's overlay, pixel for pixel."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import compose_config, one_thread
from PIL import Image

from deeplab.config import demo_config, predict_config
from deeplab.deploy.demo import segment
from deeplab.deploy.segmenter import draw, load_segmenter


def photo(path: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    image[10:40, 20:50] = (230, 40, 40)
    Image.fromarray(image).save(path)
    return image


def test_the_demo_answers_with_predicts_overlay_colour_mask_and_shares(trained_run, tmp_path) -> None:
    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    image = photo(tmp_path / "p.png")
    cfg = demo_config(compose_config([f"checkpoint={checkpoint}", "alpha=0.4"], "demo"))
    seg = load_segmenter(cfg)
    with one_thread():
        overlay, color, shares = segment(seg, image, cfg.eval, cfg.alpha)
        pcfg = predict_config(compose_config([f"checkpoint={checkpoint}", "input=x", "output=x"], "predict"))
        pred = load_segmenter(pcfg)(image, pcfg.eval)
    expected_color, expected_overlay = draw(seg, image, pred, 0.4)
    assert np.array_equal(overlay, expected_overlay) and np.array_equal(color, expected_color)
    assert set(shares) <= set(seg.labels) and sum(shares.values()) == pytest.approx(1.0)
    ids, counts = np.unique(pred, return_counts=True)
    assert shares[seg.labels[int(ids[counts.argmax()])]] == pytest.approx(counts.max() / pred.size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.slow  # a browser and a web server: about 10-20 s; .ci/run runs it in its own step
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")
def test_the_page_in_a_browser_shows_predicts_overlay(trained_run, tmp_path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from deeplab.deploy.demo import serve

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    image = photo(tmp_path / "upload.png")
    port = free_port()
    cfg = compose_config([f"checkpoint={checkpoint}", f"port={port}", "alpha=0.5"], "demo")
    app = serve(cfg, block=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 60)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo input[type=file]")))
        upload.send_keys(str(tmp_path / "upload.png"))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#photo img")))
        browser.find_element(By.CSS_SELECTOR, "#segment").click()
        shown = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#overlay img")))
        wait.until(lambda b: shown.get_attribute("src"))
        # The bytes the page received, fetched by the page itself.
        data = browser.execute_async_script(
            """const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => {
              let s = ''; new Uint8Array(b).forEach(c => s += String.fromCharCode(c)); done(btoa(s)); });""",
            shown.get_attribute("src"),
        )
        labels = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#shares"))).text
    finally:
        browser.quit()
        app.close()
        shutil.rmtree(profile, ignore_errors=True)
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    seg = load_segmenter(
        predict_config(compose_config([f"checkpoint={checkpoint}", "input=x", "output=x"], "predict"))
    )
    with one_thread():
        pred = seg(image, demo_config(cfg).eval)
    _, expected = draw(seg, image, pred, 0.5)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert any(name in labels for name in seg.labels)


def test_host_and_port_are_where_the_page_is_served(trained_run, monkeypatch) -> None:
    """host=0.0.0.0 port=N: Gradio is asked to listen on every interface at N (the browser test loads the
    page from 127.0.0.1)."""
    gr = pytest.importorskip("gradio")
    from deeplab.deploy.demo import serve

    asked = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: asked.update(kwargs))
    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    serve(compose_config([f"checkpoint={checkpoint}", "host=0.0.0.0", "port=8123"], "demo"))
    assert (asked["server_name"], asked["server_port"]) == ("0.0.0.0", 8123)


def test_a_port_in_use_is_one_line(trained_run) -> None:
    import socket

    pytest.importorskip("gradio")
    from deeplab.deploy.demo import serve
    from deeplab.errors import ConfigError

    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(
            ConfigError, match=rf"^port={port}: 127.0.0.1:{port} cannot be served on \(.*give another port=N"
        ):
            serve(compose_config([f"checkpoint={checkpoint}", f"port={port}"], "demo"), block=False)


def test_uploads_are_read_as_predict_reads_them_and_bounded(tmp_path) -> None:
    """A 16-bit PNG is scaled as deeplab.predict scales it (Gradio's RGB conversion clipped it); a file that is
    not an image and an image over max_pixels are messages for the page, the latter before decoding."""
    from deeplab.data.reading import read_image
    from deeplab.deploy.demo import read_upload
    from deeplab.errors import DatasetError

    deep = tmp_path / "deep.png"
    Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)).save(deep)
    got = read_upload(deep, 10**6)
    assert got.shape == (48, 64, 3) and got.max() > 200  # scaled to the full range, not clipped at 255
    assert np.array_equal(got, read_image(deep, 3))
    (tmp_path / "notes.png").write_text("not an image\n")
    with pytest.raises(DatasetError, match="^the upload is not an image this demo reads"):
        read_upload(tmp_path / "notes.png", 10**6)
    big = tmp_path / "big.png"
    Image.new("L", (6000, 5000)).save(big)  # 30 megapixels in a small file
    with pytest.raises(
        DatasetError, match=r"^the image is 6000x5000 \(30.0 megapixels\); this demo takes up to 25.0"
    ):
        read_upload(big, 25_000_000)


def test_max_pixels_and_max_upload_mb_act(trained_run, tmp_path, monkeypatch) -> None:
    """max_pixels=N refuses a larger upload with the page's message; max_upload_mb=N is Gradio's file limit."""
    gr = pytest.importorskip("gradio")
    from deeplab.deploy.demo import answer, serve

    checkpoint = trained_run[0] / "checkpoints" / "best.pt"
    cfg = demo_config(
        compose_config([f"checkpoint={checkpoint}", "max_pixels=1000", "max_upload_mb=3"], "demo")
    )
    seg = load_segmenter(cfg)
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    photo(small)
    Image.new("RGB", (50, 30)).save(large)  # 1,500 pixels
    Image.open(small).resize((40, 25)).save(small)  # 1,000 pixels: accepted
    with one_thread():
        overlay, _, _ = answer(seg, cfg, str(small))
    assert overlay is not None
    with pytest.raises(gr.Error, match=r"50x30 .* this demo takes up to 0.0 \(max_pixels=N"):
        answer(seg, cfg, str(large))
    asked = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: asked.update(kwargs))
    serve(compose_config([f"checkpoint={checkpoint}", "max_upload_mb=3", f"port={free_port()}"], "demo"))
    assert asked["max_file_size"] == "3mb"
