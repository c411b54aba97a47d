"""What `checkpoint=` (and model.init_from) may name, and the one function that finds the file behind it.

Accepted: a .pt/.pth file; an .onnx file (run with ONNX Runtime where the command can); an OpenVINO model.xml
(with its model.bin; run with OpenVINO); a run folder or its
checkpoints/ folder (best.pt, or last.pt while no best.pt exists yet); the model folder written by
`python -m deeplab.export format=hub` (config.json + model.safetensors).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from deeplab.atomicfile import COMMIT_FILE, finish_commit
from deeplab.errors import CheckpointError

log = logging.getLogger(__name__)

CARD_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class Located:
    """checkpoint: a torch file (ours, or torchvision's weights); hub: a model folder; onnx, openvino: an exported
    graph."""

    path: Path
    kind: Literal["checkpoint", "hub", "onnx", "openvino"]

    @property
    def is_graph(self) -> bool:
        """An exported graph (no PyTorch weights): run by its own runtime."""
        return self.kind in ("onnx", "openvino")

    @property
    def format_name(self) -> str:
        return {"onnx": "ONNX", "openvino": "OpenVINO"}.get(self.kind, self.kind)


def is_model_folder(folder: Path) -> bool:
    return (folder / CARD_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def locate(setting: str | Path, key: str = "checkpoint") -> Located:
    """The file or model folder `key=setting` names; a folder holding none of them is one CheckpointError
    saying what was looked for."""
    path = Path(setting).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".xml":
            finish_export(path.parent)  # model.xml and model.bin are renamed into place together
            return Located(path, "openvino")
        return Located(path, "onnx" if suffix == ".onnx" else "checkpoint")
    if not path.is_dir():
        raise CheckpointError(
            f"{key}: {path} does not exist; give a checkpoint (.pt), a run folder, an exported model folder, "
            "an .onnx file or an OpenVINO model.xml"
        )
    finish_export(path)
    if is_model_folder(path):
        run = next(
            (f for f in (path / "checkpoints" / "best.pt", path / "checkpoints" / "last.pt") if f.is_file()),
            None,
        )
        if run is not None:
            log.warning(
                "%s: %s is both a model folder and a run folder; reading the model folder (%s + %s), not %s (give "
                "that file to use the run's checkpoint)", key, path, CARD_FILE, WEIGHTS_FILE, run,
            )  # fmt: skip
        return Located(path, "hub")
    for folder in (path / "checkpoints", path):
        if (folder / "best.pt").is_file():
            return Located(folder / "best.pt", "checkpoint")
        if (folder / "last.pt").is_file():
            # A run still training (or stopped before its first validation) has no best.pt yet.
            log.warning("%s: %s has no best.pt yet; using %s", key, folder, folder / "last.pt")
            return Located(folder / "last.pt", "checkpoint")
    raise CheckpointError(
        f"{key}: folder {path} holds no model: looked for checkpoints/best.pt, checkpoints/last.pt, best.pt, "
        f"last.pt and {CARD_FILE} + {WEIGHTS_FILE} (python -m deeplab.export format=hub); give one of them"
    )


def finish_export(folder: Path) -> None:
    """Complete a model folder's export that was killed between its renames (deeplab.atomicfile.atomic_files)."""
    if not (folder / COMMIT_FILE).exists():
        return
    try:
        finish_commit(folder)
    except OSError as e:
        raise CheckpointError(
            f"model folder {folder} holds an export stopped half-way ({COMMIT_FILE}) that cannot be completed "
            f"here ({e.strerror or e}); export it again, or read it once where the folder is writable"
        ) from None
    log.warning("model folder %s: completed an export that was stopped half-way", folder)


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors as a state dict; a damaged file is one CheckpointError."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_safetensors
    except ImportError:
        raise CheckpointError(f'reading {path} needs safetensors: pip install -e ".[hub]"') from None

    try:
        return load_safetensors(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"weights file {path} cannot be read ({e}); export the model folder again"
        ) from None
