"""The model process of deeplab.serve (deeplab.deploy.serve): LitServe starts one per worker, hands it the
requests the HTTP process accepted, in batches, and sends back what encode_response returns."""

from __future__ import annotations

import base64
import io
import signal
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import litserve as ls
import numpy as np
import torch
from PIL import Image
from starlette.responses import JSONResponse, Response

from deeplab.config import ServeConfig
from deeplab.data.reading import read_image_bytes
from deeplab.deploy.segmenter import draw, load_segmenter
from deeplab.deploy.serve import MEDIA_TYPES, Refused
from deeplab.errors import DatasetError
from deeplab.visualize import ids_image


@dataclass
class Job:
    """One decoded request in a model process."""

    image: np.ndarray  # (H, W, 3) uint8
    output: str


@dataclass
class Answer:
    """One prediction and the number of images that shared its forward pass."""

    job: Job
    pred: np.ndarray  # (H, W) uint8 class ids
    batch: int


def shares(pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The classes present in a prediction with their pixel counts and shares."""
    counts = np.bincount(pred.ravel(), minlength=len(labels))
    total = int(pred.size)
    classes = [
        {"id": int(c), "name": labels[c] if c < len(labels) else str(c), "pixels": int(n), "share": n / total}
        for c, n in enumerate(counts.tolist())
        if n
    ]
    return {"height": int(pred.shape[0]), "width": int(pred.shape[1]), "classes": classes}


class SegmentationAPI(ls.LitAPI):
    """Runs in each model process: decodes, predicts a batch grouped by image size, encodes."""

    def __init__(self, cfg: ServeConfig, threads: int) -> None:
        with warnings.catch_warnings():  # max_batch_size=1 with batch() defined: LitServe warns, we mean it
            warnings.filterwarnings("ignore", "The LitServer has both batch and unbatch")
            super().__init__(max_batch_size=cfg.max_batch_size, batch_timeout=cfg.max_batch_wait_ms / 1000)
        self.cfg, self.threads = cfg, threads

    def setup(self, device: str) -> None:
        # Ctrl-C reaches every process of the terminal's group: the server's main process stops the workers.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(self.threads)
        self.seg = load_segmenter(self.cfg)

    # No annotation on `request`: LitServe reads the annotation to choose how FastAPI parses the body, and none
    # means JSON (what deeplab.deploy.serve.UploadGate turns every upload into).
    def decode_request(self, request) -> Job | Refused:  # noqa: ANN001
        try:
            image = read_image_bytes(base64.b64decode(request["image"]), request["name"])
        except DatasetError as e:  # a refusal of its own: the batch it joins is not failed by it
            return Refused(400, str(e))
        return Job(image, request["output"])

    def batch(self, inputs: list[Job | Refused]) -> list[Job | Refused]:
        return inputs

    def predict(self, jobs: Any) -> Any:
        if not isinstance(jobs, list):  # max_batch_size=1: LitServe passes single requests
            return self.predict([jobs])[0]
        answers: list[Answer | Refused] = list(jobs)
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            if isinstance(job, Job):
                by_size[job.image.shape].append(i)
        for indices in by_size.values():
            preds = self.seg.predict_batch([jobs[i].image for i in indices], self.cfg.eval)
            for i, pred in zip(indices, preds):
                answers[i] = Answer(jobs[i], pred, len(indices))
        return answers

    def unbatch(self, output: list[Answer | Refused]) -> list[Answer | Refused]:
        return output

    def encode_response(self, output: Answer | Refused) -> Response:
        if isinstance(output, Refused):
            return JSONResponse({"detail": output.detail}, status_code=output.status)
        headers = {"X-Batch-Size": str(output.batch)}
        kind = output.job.output
        if kind == "json":
            return JSONResponse(shares(output.pred, self.seg.labels), headers=headers)
        buffer = io.BytesIO()
        if kind == "overlay":
            _, overlay = draw(self.seg, output.job.image, output.pred, self.cfg.alpha)
            Image.fromarray(overlay).save(buffer, format="JPEG")
        else:
            ids_image(output.pred, self.seg.palette).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type=MEDIA_TYPES[kind], headers=headers)
