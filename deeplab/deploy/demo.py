"""A web page to try a model: `python -m deeplab.demo checkpoint=PATH [port=7860]` (the [demo] extra, Gradio).

The user uploads an image and gets back the overlay with its legend (as `deeplab.predict` draws it), the colour
mask and the share of the image's pixels each class takes. checkpoint= takes what predict takes: a checkpoint,
an exported model folder or an .onnx file (deeplab.deploy.predict.load_segmenter). Nothing is fetched from the
internet: Gradio's analytics are off and the page uses the browser's own fonts.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from omegaconf import DictConfig

from deeplab.cli import hydra_main
from deeplab.config import DemoConfig, EvalConfig, demo_config
from deeplab.errors import ConfigError


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


def build_app(seg: Any, cfg: DemoConfig) -> Any:
    """The Gradio page: an image in; the overlay, the colour mask and the class shares out."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    if seg.in_channels != 3:
        raise ConfigError(
            f"checkpoint: the demo takes RGB photos, but the model takes {seg.in_channels} channels"
        )

    def run(image: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, float] | None]:
        if image is None:
            return None, None, None
        return segment(seg, np.ascontiguousarray(image[:, :, :3], dtype=np.uint8), cfg.eval, cfg.alpha)

    with gr.Blocks(title="DeepLab demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"### DeepLab: {len(seg.labels)} classes ({', '.join(seg.labels[:12])}{' ...' if len(seg.labels) > 12 else ''})"
        )
        with gr.Row():
            photo = gr.Image(
                label="image", type="numpy", image_mode="RGB", sources=["upload"], elem_id="photo"
            )
            overlay = gr.Image(label="overlay", format="png", elem_id="overlay")  # PNG: the pixels as drawn
        with gr.Row():
            color = gr.Image(label="colour mask", format="png", elem_id="color")
            shares = gr.Label(label="share of pixels", num_top_classes=len(seg.labels), elem_id="shares")
        button = gr.Button("Segment", variant="primary", elem_id="segment")
        button.click(run, inputs=photo, outputs=[overlay, color, shares])
    return app


def serve(cfg: DemoConfig | DictConfig, block: bool = True) -> Any:
    """Load the model, build the page and serve it on cfg.host:cfg.port; returns the app (block=False: the
    server runs in a thread until app.close())."""
    from deeplab.deploy.segmenter import load_segmenter

    cfg = demo_config(cfg)
    seg = load_segmenter(cfg)
    app = build_app(seg, cfg)
    import gradio as gr

    # The browser's own fonts: Gradio's default theme would ask Google Fonts for its typeface.
    theme = gr.themes.Default(font="sans-serif", font_mono="monospace")
    app.launch(
        theme=theme, server_name=cfg.host, server_port=cfg.port, prevent_thread_lock=not block, quiet=not block,
        footer_links=[], ssr_mode=False,
    )  # fmt: skip
    return app


@hydra_main(config_path="../../configs", config_name="demo")
def main(cfg: DictConfig) -> None:
    from deeplab.cli import exit_on_user_error

    with exit_on_user_error():
        serve(cfg)


if __name__ == "__main__":
    main()
