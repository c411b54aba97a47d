"""A web page to try a model: `python -m deeplab.demo checkpoint=PATH [port=7860]` (the [demo] extra, Gradio).

The user uploads an image and gets back the overlay with its legend (as `deeplab.predict` draws it), the colour
mask and the share of the image's pixels each class takes. checkpoint= takes what predict takes: a checkpoint,
an exported model folder or an .onnx file (deeplab.deploy.predict.load_segmenter). Nothing is fetched from the
internet: Gradio's analytics are off and the page uses the browser's own fonts.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from deeplab.cli import hydra_main
from deeplab.config import DemoConfig, EvalConfig, demo_config
from deeplab.errors import ConfigError, DatasetError, first_line


def segment(
    seg: Any, image: np.ndarray, ev: EvalConfig, alpha: float
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(overlay with its legend, colour mask, {class name: share of the pixels}) of an (H, W, 3) uint8 image,
    with deeplab.predict's model call and drawing (seg: predict.Segmenter)."""
    from deeplab.deploy.segmenter import draw

    pred = seg(image, ev)  # (H, W) class ids
    color, overlay = draw(seg, image, pred, alpha)
    ids, counts = np.unique(pred, return_counts=True)
    shares = {
        seg.labels[i]: float(n) / pred.size
        for i, n in zip(ids.tolist(), counts.tolist())
        if i < len(seg.labels)
    }
    return overlay, color, shares


def read_upload(path: Path, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 of an uploaded file, read as deeplab.predict reads images (16-bit scaled, not clipped);
    a file that is not an image, or one of more than max_pixels pixels (measured from its header, before it is
    decoded), is a DatasetError the page shows."""
    from PIL import Image, UnidentifiedImageError

    from deeplab.data.reading import read_image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError):
        raise DatasetError(
            "the upload is not an image this demo reads (PNG, JPEG, TIFF, BMP, WebP); choose a photo"
        ) from None
    if width * height > max_pixels:
        raise DatasetError(
            f"the image is {width}x{height} ({width * height / 1e6:.1f} megapixels); this demo takes up to "
            f"{max_pixels / 1e6:.1f} (max_pixels=N when starting it): scale the photo down"
        )
    return read_image(path, 3)


def answer(
    seg: Any, cfg: DemoConfig, path: str | None
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, float] | None]:
    """What the page shows for an uploaded file: segment()'s overlay, mask and shares; a file the demo refuses
    (cfg.max_pixels, not an image) is a gr.Error, the page's message."""
    import gradio as gr

    if path is None:
        return None, None, None
    try:
        image = read_upload(Path(path), cfg.max_pixels)
    except DatasetError as e:
        raise gr.Error(str(e)) from None
    return segment(seg, image, cfg.eval, cfg.alpha)


def build_app(seg: Any, cfg: DemoConfig) -> Any:
    """The Gradio page: an image in; the overlay, the colour mask and the class shares out, as soon as the
    image is uploaded (and again with the button)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    if seg.in_channels != 3:
        raise ConfigError(
            f"checkpoint: the demo takes RGB photos, but the model takes {seg.in_channels} channels"
        )

    def run(path: str | None) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, float] | None]:
        return answer(seg, cfg, path)

    with gr.Blocks(title="DeepLab demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"### DeepLab: {len(seg.labels)} classes ({', '.join(seg.labels[:12])}{' ...' if len(seg.labels) > 12 else ''})"
        )
        with gr.Row():
            # The file as uploaded, unconverted: Gradio's conversion to RGB clipped 16-bit images.
            photo = gr.Image(
                label="image", type="filepath", image_mode=None, sources=["upload"], elem_id="photo"
            )
            overlay = gr.Image(label="overlay", format="png", elem_id="overlay")  # PNG: the pixels as drawn
        with gr.Row():
            color = gr.Image(label="colour mask", format="png", elem_id="color")
            shares = gr.Label(label="share of pixels", num_top_classes=len(seg.labels), elem_id="shares")
        button = gr.Button("Segment", variant="primary", elem_id="segment")
        button.click(run, inputs=photo, outputs=[overlay, color, shares])
        photo.upload(run, inputs=photo, outputs=[overlay, color, shares])  # at once: no button to find first
    return app


def serve(cfg: DemoConfig | DictConfig, block: bool = True) -> Any:
    """Load the model, build the page and serve it on cfg.host:cfg.port; returns the app (block=False: the
    server runs in a thread until app.close())."""
    from deeplab.deploy.segmenter import load_segmenter

    cfg = demo_config(cfg)
    check_port_free(cfg.host, cfg.port)
    seg = load_segmenter(cfg)
    seg.single_label("the demo")
    app = build_app(seg, cfg)
    import gradio as gr

    # The browser's own fonts: Gradio's default theme would ask Google Fonts for its typeface.
    theme = gr.themes.Default(font="sans-serif", font_mono="monospace")
    try:
        app.launch(
            theme=theme, server_name=cfg.host, server_port=cfg.port, prevent_thread_lock=not block,
            quiet=not block, footer_links=[], ssr_mode=False, max_file_size=f"{cfg.max_upload_mb}mb",
            show_error=True,  # a file Pillow cannot open: its message on the page, not a bare "Error"
        )  # fmt: skip
    except OSError as e:  # the port taken between the check and the launch
        raise ConfigError(
            f"port={cfg.port}: cannot serve on {cfg.host}:{cfg.port} ({first_line(e)}); give another port"
        ) from None
    return app


def check_port_free(host: str, port: int) -> None:
    """ConfigError unless host:port can be listened on (another demo or server holds it, or the address is not
    this machine's)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise ConfigError(
            f"port={port}: {host}:{port} cannot be served on ({e.strerror or e}: another server, or another "
            "demo, holds it?); give another port=N"
        ) from None


@hydra_main(config_path="../../configs", config_name="demo")
def main(cfg: DictConfig) -> None:
    from deeplab.cli import exit_on_user_error

    with exit_on_user_error():
        serve(cfg)


if __name__ == "__main__":
    main()
