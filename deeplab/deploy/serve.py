"""`python -m deeplab.serve checkpoint=PATH [host=127.0.0.1] [port=8000] [max_batch_size=8] [workers=1]`: a trained
model behind HTTP, on LitServe (FastAPI + uvicorn in front, model processes behind a queue that batches).

    POST /predict[?output=png|json|overlay]   the image as the raw body, or as a multipart form's file
        png (default): the class-id PNG deeplab.predict writes (pixel values are class ids, the palette draws them)
        json: {"width", "height", "classes": [{"id", "name", "pixels", "share"}, ...]} of the classes present
        overlay: the colour mask over the photo with its legend, as deeplab.predict's _overlay.jpg
    GET /model    the model card: classes, colours, normalisation, stride, runtime and the serving limits
    GET /health   200 "ok" once every model process is ready, else 503

Requests that arrive within max_batch_wait_ms of each other share one forward pass (up to max_batch_size
images); images of different sizes in one batch are grouped by size, one pass per size, since padding would
change the prediction (the image-pooling branch averages over the whole image). The response header
X-Batch-Size says how many images shared the request's pass.

Bad input never reaches a model process: the HTTP process (UploadGate) refuses a body over max_request_mb
(413, before reading it), an image over max_pixels by its header before any decoding (413: a decompression
bomb), anything that is not an image (415), a missing image or an unknown ?output (400). An image whose header
reads but whose data does not decode is answered 400 by the model process without touching the others of its
batch. Every error is one line of JSON: {"detail": "..."}.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import sys
import threading
import time
from typing import Any
from urllib.parse import parse_qs

from omegaconf import DictConfig

from deeplab.cli import hydra_main
from deeplab.config import ServeConfig, serve_config
from deeplab.errors import ConfigError, first_line

OUTPUTS = ("png", "json", "overlay")
MEDIA_TYPES = {"png": "image/png", "json": "application/json", "overlay": "image/jpeg"}


class Refused(Exception):
    """A request answered with `status` and one line, before or instead of its prediction."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def parse_output(query_string: bytes) -> str:
    values = parse_qs(query_string.decode("latin-1")).get("output", ["png"])
    if values[-1] not in OUTPUTS:
        raise Refused(
            400, f"output={values[-1]} is not one of {', '.join(OUTPUTS)}; e.g. /predict?output=json"
        )
    return values[-1]


def check_header(data: bytes, max_pixels: int) -> None:
    """Refused unless `data` starts like an image of at most max_pixels (only the header is read)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise Refused(
            400, "no image in the request: POST the image's bytes, or a multipart form with the file"
        )
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        raise Refused(
            413, f"the image is larger than {max_pixels} pixels (max_pixels); scale it down"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise Refused(
            415, "the body is not an image this server reads (PNG, JPEG, TIFF, BMP, WebP)"
        ) from None
    if width * height > max_pixels:
        raise Refused(
            413,
            f"the image is {width}x{height} ({width * height / 1e6:.1f} megapixels); this server takes up to "
            f"{max_pixels / 1e6:.1f} (max_pixels): scale it down",
        )


class UploadGate:
    """ASGI middleware in front of POST /predict: reads the upload (raw body or multipart) within the limits,
    checks the image header, and hands LitServe the JSON it passes to a model process:
    {"image": base64, "name": file name, "output": png|json|overlay}. A refused request gets its status and
    {"detail": "..."} here and never reaches the queue."""

    def __init__(self, app: Any, *, max_bytes: int, max_pixels: int, path: str = "/predict") -> None:
        self.app, self.max_bytes, self.max_pixels, self.path = app, max_bytes, max_pixels, path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        try:
            payload = await self.read(scope, receive)
        except Refused as e:
            await JSONResponse({"detail": e.detail}, status_code=e.status)(scope, receive, send)
            return
        body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.app(dict(scope, headers=headers), replay(body, receive), send)

    async def read(self, scope: dict, receive: Any) -> dict[str, str]:
        output = parse_output(scope.get("query_string", b""))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = f"the request is larger than {self.max_bytes / 2**20:g} MB (max_request_mb)"
        if int(headers.get("content-length") or 0) > self.max_bytes:
            raise Refused(413, limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refused(400, "the client disconnected before sending the whole request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise Refused(413, limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, name = b"".join(chunks), "upload"
        if headers.get("content-type", "").startswith("multipart/form-data"):
            body, name = await first_file(scope, body)
        check_header(body, self.max_pixels)
        return {"image": base64.b64encode(body).decode("ascii"), "name": name, "output": output}


def replay(body: bytes, receive: Any) -> Any:
    """An ASGI receive that yields `body` once, then what the client sends next (its disconnect)."""
    sent = False

    async def receive_again() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


async def first_file(scope: dict, body: bytes) -> tuple[bytes, str]:
    """(bytes, file name) of the first file of a multipart form."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    async def nothing() -> dict:
        return {"type": "http.disconnect"}

    try:
        form = await Request(scope, replay(body, nothing)).form(max_files=4, max_fields=16)
    except Exception as e:  # python-multipart's and starlette's parse errors
        raise Refused(400, f"the multipart form cannot be parsed: {first_line(e)}") from None
    for value in form.values():
        if isinstance(value, UploadFile):
            return await value.read(), value.filename or "upload"
    raise Refused(
        400, "the multipart form holds no file: send the image as a file field (curl -F image=@photo.jpg)"
    )


def model_card(seg: Any, cfg: ServeConfig, threads: int) -> dict[str, Any]:
    """What GET /model answers: the model as the server runs it, and the serving limits."""
    from deeplab.artifacts.locate import locate

    located = locate(cfg.checkpoint)
    model = seg.model
    runtime = {"onnx": "onnxruntime", "openvino": "openvino"}.get(located.kind, "pytorch")
    return {
        "checkpoint": str(cfg.checkpoint),
        "format": located.kind,
        "runtime": runtime,
        "model": seg.card.get("model"),
        "class_names": seg.labels,
        "num_classes": len(seg.labels),
        "palette": seg.palette[: len(seg.labels)].tolist(),
        "in_channels": seg.in_channels,
        "mean": seg.card.get("mean"),
        "std": seg.card.get("std"),
        "output_stride": model.output_stride,
        "eval": cfg.eval.model_dump(),
        "serving": {
            "max_batch_size": cfg.max_batch_size, "max_batch_wait_ms": cfg.max_batch_wait_ms,
            "workers": cfg.workers, "threads_per_worker": threads, "timeout_s": cfg.timeout_s,
            "max_request_mb": cfg.max_request_mb, "max_pixels": cfg.max_pixels,
        },
    }  # fmt: skip


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build_server(cfg: ServeConfig) -> Any:
    """The LitServer, its model loaded once here first, so that a bad checkpoint or setting is one line before any
    process starts."""
    from deeplab.deploy.segmenter import load_segmenter

    seg = load_segmenter(cfg)
    seg.single_label("deeplab.serve (class-id PNGs and class shares)")
    try:
        import litserve as ls
    except ImportError:
        raise ConfigError('deeplab.serve needs litserve: pip install -e ".[serve]"') from None
    from starlette.responses import JSONResponse

    from deeplab.deploy.serve_worker import SegmentationAPI

    if seg.in_channels != 3:
        raise ConfigError(
            f"checkpoint={cfg.checkpoint}: the model takes {seg.in_channels}-channel images; the server takes "
            "photos (3 channels); predict multi-band files with python -m deeplab.predict"
        )
    threads = max(1, usable_cores() // cfg.workers)
    card = model_card(seg, cfg, threads)
    on_gpu = seg.rt.device.type == "cuda"
    del seg
    server = ls.LitServer(
        SegmentationAPI(cfg, threads), accelerator="cuda" if on_gpu else "cpu", devices=1,
        workers_per_device=cfg.workers, timeout=cfg.timeout_s,
        middlewares=[(UploadGate, {"max_bytes": int(cfg.max_request_mb * 2**20), "max_pixels": cfg.max_pixels})],
    )  # fmt: skip
    server.app.add_api_route("/model", lambda: JSONResponse(card), methods=["GET"])
    return server


def serve(cfg: ServeConfig | DictConfig) -> None:
    """Serve until Ctrl-C, SIGTERM or SIGHUP; then every process of the server stops and the command exits with
    128 + the signal's number."""
    from deeplab.deploy.demo import check_port_free

    cfg = serve_config(cfg)
    check_port_free(cfg.host, cfg.port)
    server = build_server(cfg)
    print(
        f"serving {cfg.checkpoint} on http://{cfg.host}:{cfg.port} (POST /predict, GET /model, GET /health)"
    )
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        # Only a list append (no lock, so a second signal arriving inside the handler cannot deadlock it): the
        # main thread is inside a call to LitServe's process manager, and an exception raised there (Ctrl-C's
        # default) breaks that call half-way and leaves the shutdown waiting on it.
        received.append(signum)

    def shut_down() -> None:
        while not received or server._shutdown_event is None:  # the event is created by run()
            time.sleep(0.1)
        server._shutdown_event.set()  # what LitServe's own /shutdown endpoint sets

    handled = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    threading.Thread(target=shut_down, name="deeplab-serve-stop", daemon=True).start()
    try:
        server.run(host=cfg.host, port=cfg.port, generate_client_file=False, log_level="warning")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        print(f"stopped by {signal.Signals(received[0]).name}", file=sys.stderr)
        sys.exit(128 + received[0])


@hydra_main(config_path="../../configs", config_name="serve")
def main(cfg: DictConfig) -> None:
    from deeplab.cli import exit_on_user_error

    with exit_on_user_error():
        serve(cfg)


if __name__ == "__main__":
    main()
