"""The shareable model folder, as Hugging Face tooling reads it (huggingface_hub's PyTorchModelHubMixin layout):

    config.json         the model card (deeplab.artifacts.card.ModelCard)
    model.safetensors   the weights
    README.md           the card for people: YAML front matter (library, tags, dataset, metrics), the metrics
                        and the per-class IoU as tables, how to load the model, the command that trained it

`python -m deeplab.export checkpoint=... format=hub output=DIR` writes it; `deeplab.load(DIR or "owner/name")`
returns the model with its card; `push_to_hub(DIR, "owner/name")` uploads it (the [hub] extra).
"""

from __future__ import annotations

import math
import os
import queue
import threading
from pathlib import Path
from typing import Any

import yaml

from deeplab.artifacts.card import ModelCard
from deeplab.artifacts.locate import CARD_FILE, WEIGHTS_FILE
from deeplab.atomicfile import atomic_files
from deeplab.errors import CheckpointError, ConfigError, ExportError, first_line
from deeplab.evaluation.report import markdown_cell

README_FILE = "README.md"
METRICS = (
    ("pixel_acc", "pixel accuracy"),
    ("mean_acc", "mean accuracy"),
    ("miou", "mIoU"),
    ("fwiou", "FWIoU"),
)
HUB_EXTRA = 'the Hugging Face hub needs huggingface_hub: pip install -e ".[hub]"'


def _percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * float(value):.2f}"


def front_matter(card: ModelCard) -> dict[str, Any]:
    """The README's YAML header: what the hub indexes (library, tags, dataset, metrics)."""
    p, metrics = card.provenance, card.provenance.metrics or {}
    meta: dict[str, Any] = {
        "library_name": "deeplab",
        "pipeline_tag": "image-segmentation",
        "tags": ["semantic-segmentation", "deeplab", card.model.name, card.backbone.name, "pytorch"],
        "datasets": [p.dataset],
        "metrics": ["mean_iou", "accuracy"],
    }
    results = [
        {"type": key, "name": name, "value": round(100 * float(metrics[key]), 2)}
        for key, name in METRICS
        if metrics.get(key) is not None
    ]
    if results:
        meta["model-index"] = [
            {
                "name": f"{card.model.name}-{card.backbone.name}-{p.dataset}",
                "results": [
                    {
                        "task": {"type": "image-segmentation", "name": "Semantic segmentation"},
                        "dataset": {"type": p.dataset, "name": p.dataset},
                        "metrics": results,
                    }
                ],
            }
        ]
    return meta


def readme(card: ModelCard) -> str:
    """README.md of a model folder: front matter, results, per-class IoU, usage, provenance."""
    p = card.provenance
    metrics = p.metrics or {}
    title = f"{card.model.name} / {card.backbone.name} on {p.dataset}"
    lines = ["---", yaml.safe_dump(front_matter(card), sort_keys=False).rstrip(), "---", "", f"# {title}", ""]
    lines += [
        f"Semantic segmentation, {card.labels.num_classes} classes, {card.labels.in_channels} input channels, "
        f"output stride {card.backbone.output_stride}; trained {p.iteration if p.iteration is not None else '?'} "
        f"iterations with deeplab {p.version or '(an earlier version)'}"
        f"{f' (commit {p.commit[:10]})' if p.commit else ''}{f' on {p.date}' if p.date else ''}.",
        "",
        "## Validation metrics",
        "",
    ]
    if metrics:
        lines += ["| metric | % |", "|---|---|"] + [
            f"| {name} | {_percent(metrics.get(key))} |" for key, name in METRICS
        ]
        lines += ["", "## Per-class IoU", "", "| class | IoU % |", "|---|---|"]
        iou = list(metrics.get("iou_per_class") or [])
        for i, name in enumerate(card.labels.class_names):
            lines.append(f"| {markdown_cell(name)} | {_percent(iou[i] if i < len(iou) else None)} |")
    else:
        lines.append("Not recorded (the checkpoint was written before validation, or by an earlier version).")
    command = "python train.py " + " ".join(p.overrides) if p.overrides is not None else None
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import deeplab",
        "",
        'model, card = deeplab.load("path/to/this/folder")  # or the hub repo id, with pip install "deeplab[hub]"',
        "logits = model(images)['out']  # images: (B, C, H, W) float, normalised with card.labels.mean / std",
        "```",
        "",
        "or `python -m deeplab.predict checkpoint=path/to/this/folder input=photos/`, "
        "`python evaluate.py checkpoint=path/to/this/folder`.",
        "",
        "## Training",
        "",
        f"`{command}`"
        if command
        else "The command is not recorded (a checkpoint written before model cards).",
        "",
        "The full card (architecture, classes, colours, normalisation, metrics) is `config.json`.",
        "",
    ]
    return "\n".join(lines)


def write_model_folder(state: dict[str, Any], card: ModelCard, folder: Path) -> Path:
    """config.json, model.safetensors and README.md in `folder`, written whole and together, or not at all."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ExportError('format=hub needs safetensors: pip install -e ".[hub]"') from None
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share memory; every tensor of a state dict is its own here.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    # The three files are replaced together: a kill never leaves the card of one export beside the weights of
    # another (deeplab.atomicfile.atomic_files).
    with atomic_files([folder / WEIGHTS_FILE, folder / CARD_FILE, folder / README_FILE]) as (
        weights,
        card_file,
        doc,
    ):
        save_file(tensors, str(weights), metadata={"format": "pt"})
        card_file.write_text(card.model_dump_json(indent=2) + "\n")
        doc.write_text(readme(card))
    return folder


# Seconds a hub download may take (DEEPLAB_HUB_TIMEOUT): huggingface_hub's client has no overall timeout, and
# an endpoint that accepted the connection and never answered held it for over four minutes.
HUB_TIMEOUT = 120.0


def hub_timeout() -> float:
    try:
        return float(os.environ.get("DEEPLAB_HUB_TIMEOUT", HUB_TIMEOUT))
    except ValueError:
        raise ConfigError(
            f"DEEPLAB_HUB_TIMEOUT={os.environ['DEEPLAB_HUB_TIMEOUT']!r} is not a number of seconds"
        ) from None


def _download(repo_id: str, revision: str | None, timeout: float | None = None) -> Path:
    """The model folder of a hub repo, from huggingface_hub's cache or downloaded (card and weights only),
    within `timeout` seconds (the download runs in a daemon thread; one that does not end is left behind)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{repo_id} is not a local folder, and {HUB_EXTRA}") from None
    done: queue.Queue[tuple[str | None, BaseException | None]] = queue.Queue()

    def fetch() -> None:
        try:
            done.put(
                (
                    snapshot_download(
                        repo_id, revision=revision, allow_patterns=[CARD_FILE, WEIGHTS_FILE, README_FILE]
                    ),
                    None,
                )
            )
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            done.put((None, e))

    timeout = hub_timeout() if timeout is None else timeout
    threading.Thread(target=fetch, name=f"hub-download-{repo_id}", daemon=True).start()
    try:
        path, error = done.get(timeout=timeout)
    except queue.Empty:
        raise CheckpointError(
            f"could not fetch {repo_id} from the Hugging Face hub within {timeout:g} s; check the network (and "
            "HF_ENDPOINT), allow more time with DEEPLAB_HUB_TIMEOUT=SECONDS, or give a local model folder"
        ) from None
    if error is not None:  # hub errors (offline, unknown repo, auth) are many kinds; the user gets one line
        raise CheckpointError(
            f"could not fetch {repo_id} from the Hugging Face hub ({first_line(error)}); "
            "give a local model folder instead"
        ) from None
    return Path(str(path))


def load(path_or_repo_id: str | Path, revision: str | None = None) -> tuple[Any, ModelCard]:
    """(model in eval mode on the CPU, its card) of a model folder, a checkpoint (a .pt file or run folder),
    or a Hugging Face hub repo id ("owner/name", with the [hub] extra)."""
    from deeplab.deploy.restore import load_trained_model

    path = Path(path_or_repo_id).expanduser()
    text = str(path_or_repo_id)
    if not path.exists() and text.count("/") == 1 and not text.startswith((".", "/", "~")):
        path = _download(text, revision)
    return load_trained_model(path, "deeplab.load")


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
) -> str:
    """Upload a model folder (checked to load first) to the hub repo `repo_id`, created if needed; returns the
    commit's URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise CheckpointError(f"push_to_hub: {HUB_EXTRA}") from None
    folder = Path(folder)
    load(folder)  # a folder that does not load is not uploaded
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), revision=revision,
        allow_patterns=[CARD_FILE, WEIGHTS_FILE, README_FILE], commit_message="Upload deeplab model",
    )  # fmt: skip
    return str(getattr(info, "commit_url", info))
