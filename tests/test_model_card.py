"""The model card: the exported model folder round trip, an older checkpoint, no downloads, what `checkpoint=`
accepts, and the roles of the config keys that resume, evaluate and the upgrade of old checkpoints read."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.configs import compose_config, one_thread, tiny_config
from PIL import Image

import deeplab
from deeplab.artifacts.card import make_card
from deeplab.artifacts.checkpoint import load_checkpoint
from deeplab.artifacts.locate import locate
from deeplab.config import location_keys, train_config
from deeplab.deploy.evaluate import evaluate_checkpoint
from deeplab.deploy.export import export
from deeplab.deploy.predict import predict
from deeplab.errors import CheckpointError, ConfigError
from deeplab.train.resume import check_resumable

OLD = Path(__file__).parent / "data" / "checkpoint_866ce4c" / "last.pt"
# Its validation at iteration 2 on the tiny experiment's data (tests/data/checkpoint_866ce4c/README.md).
OLD_PIXEL_ACC, OLD_MIOU = 0.08320987654320988, 0.02080246913580247
# A model folder and an ONNX file of the same version (tests/data/export_25cd6a1/README.md), scored then.
EXPORTED = Path(__file__).parent / "data" / "export_25cd6a1"
EXPORTED_PIXEL_ACC, EXPORTED_MIOU = 0.08320987654320988, 0.02092647789369101
SCORES = ("pixel_acc", "mean_acc", "miou", "fwiou", "iou_per_class", "confusion_matrix", "num_images")


@pytest.fixture(scope="module")
def model_folder(trained_run, tmp_path_factory) -> Path:
    """The tiny run's best.pt exported with format=hub."""
    folder = tmp_path_factory.mktemp("hub") / "model"
    cfg = compose_config(
        [f"checkpoint={trained_run[0]}", "format=hub", f"output={folder}"], config_name="export"
    )
    assert export(cfg, folder.parent) == folder
    return folder


def _evaluate(checkpoint: Path | str, out: Path, *extra: str) -> dict:
    cfg = compose_config([f"checkpoint={checkpoint}", "num_workers=0", *extra], config_name="evaluate")
    with one_thread():
        return evaluate_checkpoint(cfg, out)


def test_the_model_folder_evaluates_and_predicts_as_best_pt(trained_run, model_folder, tmp_path) -> None:
    from safetensors.torch import load_file

    run_dir = trained_run[0]
    best = run_dir / "checkpoints" / "best.pt"
    assert sorted(p.name for p in model_folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    # The weights open with safetensors and are best.pt's.
    weights, ckpt = load_file(str(model_folder / "model.safetensors")), torch.load(best, weights_only=True)
    assert weights.keys() == ckpt["model"].keys()
    assert all(torch.equal(weights[k], ckpt["model"][k]) for k in weights)
    # evaluate.py on the folder gives exactly the metrics of best.pt.
    from_best = _evaluate(best, tmp_path / "best")
    from_folder = _evaluate(model_folder, tmp_path / "folder")
    assert {k: from_folder[k] for k in SCORES} == {k: from_best[k] for k in SCORES}
    # The README: YAML front matter, and its tables are the metrics evaluate.py wrote for the folder.
    text = (model_folder / "README.md").read_text()
    _, header, body = text.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert meta["library_name"] == "deeplab" and meta["datasets"] == ["synthetic"]
    written = json.loads((tmp_path / "folder" / "metrics.json").read_text())
    rows = dict(
        line.strip("|").replace(" ", "").split("|")[:2] for line in body.splitlines() if line.count("|") == 3
    )
    for key, name in (
        ("pixel_acc", "pixelaccuracy"),
        ("mean_acc", "meanaccuracy"),
        ("miou", "mIoU"),
        ("fwiou", "FWIoU"),
    ):
        assert rows[name] == f"{100 * written[key]:.2f}"
    card = json.loads((model_folder / "config.json").read_text())
    for name, iou in zip(card["labels"]["class_names"], written["iou_per_class"]):
        assert rows[name] == ("n/a" if iou is None else f"{100 * iou:.2f}")
    assert {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}["miou"] == round(
        100 * written["miou"], 2
    )
    # predict on the folder writes the same masks as on best.pt.
    photos = tmp_path / "photos"
    photos.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(image).save(photos / "a.png")
    masks = {}
    for name, source in (("best", best), ("folder", model_folder)):
        out = tmp_path / f"pred_{name}"
        cfg = compose_config([f"checkpoint={source}", f"input={photos}", f"output={out}"], "predict")
        with one_thread():
            predict(cfg, out)
        masks[name] = np.asarray(Image.open(out / "a.png"))
    np.testing.assert_array_equal(masks["folder"], masks["best"])


def test_load_returns_the_model_with_its_card(trained_run, model_folder, monkeypatch) -> None:
    model, card = deeplab.load(model_folder)
    assert not model.training and card.labels.class_names == ["background", "disc", "square", "triangle"]
    assert card.provenance.dataset == "synthetic" and card.provenance.version == deeplab.__version__
    assert card.provenance.metrics is not None and card.provenance.iteration in (2, 4)
    # A hub repo id goes through huggingface_hub (the network call replaced by the local folder).
    import huggingface_hub

    asked = {}

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.update(repo_id=repo_id, patterns=allow_patterns)
        return str(model_folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    hub_model, hub_card = deeplab.load("someone/deeplab-tiny")
    assert asked == {
        "repo_id": "someone/deeplab-tiny",
        "patterns": ["config.json", "model.safetensors", "README.md"],
    }
    assert hub_card == card
    assert all(
        torch.equal(a, b) for a, b in zip(hub_model.state_dict().values(), model.state_dict().values())
    )
    # push_to_hub uploads the folder's three files (the upload replaced by a recorder).
    from deeplab.deploy.hub import push_to_hub

    calls = []
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(repo_id)
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(kw) or "url")
    assert push_to_hub(model_folder, "someone/deeplab-tiny") == "url"
    assert calls[0] == "someone/deeplab-tiny" and calls[1]["folder_path"] == str(model_folder)


def test_an_older_checkpoint_loads_evaluates_and_resumes(tiny_data, tmp_path, caplog) -> None:
    """tests/data/checkpoint_866ce4c/last.pt was written before the card and the roles existed."""
    from deeplab.train.engine import train

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(OLD, run_dir / "checkpoints" / "last.pt")
    # A run folder without best.pt: its last.pt, said in one line.
    with caplog.at_level(logging.WARNING, logger="deeplab.artifacts.locate"):
        metrics = _evaluate(run_dir, tmp_path / "eval", f"dataset.root={tiny_data}/synthetic")
    assert sum("has no best.pt yet; using" in r.getMessage() for r in caplog.records) == 1
    assert metrics["pixel_acc"] == pytest.approx(OLD_PIXEL_ACC, abs=1e-12)
    assert metrics["miou"] == pytest.approx(OLD_MIOU, abs=1e-12)
    # It resumes: one more iteration, and the new checkpoints carry a card.
    overrides = {
        "model.aspp.channels": 8,
        "model.decoder.channels": 8,
        "trainer.max_iters": 3,
        "trainer.resume": "auto",
    }
    with one_thread():
        train(tiny_config(tiny_data, **overrides), run_dir)
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert resumed["iteration"] == 3 and resumed["card"]["provenance"]["iteration"] == 3


@pytest.mark.parametrize("name", ["folder", "tiny.onnx"])
def test_an_older_model_folder_and_onnx_file_score_what_they_scored(name: str, tiny_data, tmp_path) -> None:
    """Written before the package moved into folders and before cards recorded a precision: loaded unchanged,
    evaluated in float32 as then, the same figures to the last digit."""
    metrics = _evaluate(EXPORTED / name, tmp_path / "eval", f"dataset.root={tiny_data}/synthetic")
    assert metrics["pixel_acc"] == pytest.approx(EXPORTED_PIXEL_ACC, abs=1e-12)
    assert metrics["miou"] == pytest.approx(EXPORTED_MIOU, abs=1e-12)


def test_training_sections_this_version_refuses_do_not_stop_evaluation(trained_run, tmp_path) -> None:
    """Loading reads the model, backbone and dataset sections only (here of a checkpoint without a card)."""
    run_dir = trained_run[0]
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    del ckpt["card"]
    config = ckpt["config"]
    config["optim"]["lr"] = -1.0
    config["trainer"]["a_key_of_the_future"] = 1
    config["loss"] = {"name": "a_loss_of_the_future"}
    torch.save(ckpt, tmp_path / "odd.pt")
    with pytest.raises(ConfigError):
        train_config(config)  # what a resumed run would refuse
    odd = _evaluate(tmp_path / "odd.pt", tmp_path / "odd")
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou"):  # the validation that chose best.pt
        assert odd[key] == pytest.approx(ckpt["metrics"][key], abs=1e-12)


def test_loading_a_card_that_says_pretrained_downloads_nothing(tmp_path, monkeypatch) -> None:
    from deeplab.deploy.hub import write_model_folder
    from deeplab.models import build_network

    cfg = train_config(
        compose_config(
            [
                "backbone=mobilenet_v2",
                "dataset=synthetic",
                "model.aspp.channels=8",
                "backbone.pretrained=true",
            ]
        )
    )
    card = make_card(cfg)
    cfg.backbone.pretrained = False
    random_weights = build_network(cfg)
    write_model_folder(random_weights.state_dict(), card, tmp_path / "model")

    def no_network(*args, **kwargs):
        raise AssertionError("loading a trained model tried to download")

    import huggingface_hub
    import torchvision.models

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    model, card = deeplab.load(tmp_path / "model")
    assert card.backbone.pretrained is True
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), random_weights.state_dict().values())
    )


def test_checkpoint_takes_files_run_folders_and_model_folders(trained_run, model_folder, tmp_path) -> None:
    from deeplab.deploy.restore import load_trained_model
    from deeplab.models.pretrained import load_matching

    run_dir = trained_run[0]
    best = run_dir / "checkpoints" / "best.pt"
    assert locate(run_dir).path == best and locate(run_dir / "checkpoints").path == best
    assert locate(best).kind == "checkpoint" and locate(model_folder).kind == "hub"
    (tmp_path / "m.onnx").write_bytes(b"")
    assert locate(tmp_path / "m.onnx").kind == "onnx"
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        CheckpointError, match=r"^checkpoint: folder .*empty holds no model: looked for checkpoints/best.pt"
    ):
        locate(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"^checkpoint: .*missing does not exist"):
        locate(tmp_path / "missing")
    # model.init_from reads the same forms.
    model, _ = load_trained_model(model_folder)
    for source in (run_dir, model_folder):
        assert load_matching(model, source) == []
    with pytest.raises(CheckpointError, match="model.init_from .* is an exported ONNX graph"):
        load_matching(model, tmp_path / "m.onnx")


def test_roles_decide_resume_evaluate_and_upgrade(tiny_data) -> None:
    # evaluate.py may override the location keys, which configs/evaluate.yaml lists.
    listed = yaml.safe_load((Path(__file__).parents[1] / "configs" / "evaluate.yaml").read_text())["dataset"]
    assert sorted(listed) == location_keys()
    with pytest.raises(
        ConfigError, match=r"^dataset.num_classes: evaluate.py may change where the model's data"
    ):
        _evaluate(OLD, Path("unused"), "+dataset.num_classes=3")
    # An old config gets the values declared next to the keys added since, and validates.
    old = torch.load(OLD, weights_only=True)["config"]
    assert "overlay_background" not in old["dataset"] or "sampler" not in old["dataset"]
    upgraded = load_checkpoint(OLD)["config"]
    train_config(upgraded)
    # Resume compares the data but not where it lies, and the optimiser but not the trainer.
    current = train_config(tiny_config(tiny_data, **{"model.aspp.channels": 8, "model.decoder.channels": 8}))
    current = current.model_dump()
    current["dataset"]["root"], current["trainer"]["max_iters"] = "/elsewhere", 9
    check_resumable(upgraded, current, OLD)
    for section, key, value, message in (
        ("dataset", "skip_bad", True, None),
        ("dataset", "num_train", 5, "was trained on other data: dataset.num_train"),
        ("optim", "lr", 0.5, "optim.lr: checkpoint 0.01, config 0.5"),
        ("backbone", "output_stride", 8, "was made for a different model: backbone.output_stride"),
    ):
        changed = copy.deepcopy(current)
        changed[section][key] = value
        if message is None:
            check_resumable(upgraded, changed, OLD)
            continue
        with pytest.raises(CheckpointError, match=message):
            check_resumable(upgraded, changed, OLD)


def _imports(path: Path) -> set[str]:
    """Every module a source file imports (also inside functions)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_schema_and_the_backbone_interface_import_nothing_above_them() -> None:
    package = Path(deeplab.__file__).parent
    # Validating a config imports neither torch nor torchvision (train.py checks it before importing torch).
    config = set().union(*(_imports(path) for path in (package / "config").glob("*.py")))
    assert not {m for m in config if m.split(".")[0] in ("torch", "torchvision")}
    # The schema holds no domain facts: class names come from configs/dataset/, not from deeplab.data.
    assert not {m for m in config if m.startswith("deeplab.data")}
    # The backbone interface does not import the backbones that subclass it (build_backbone is in models/).
    backbone = _imports(package / "models" / "backbone.py")
    assert not backbone & {
        "deeplab.config",
        "deeplab.models.resnet",
        "deeplab.models.mobilenet",
        "deeplab.models.timm_backbone",
    }


@pytest.mark.parametrize(
    ("dataset", "table"),
    [("voc", "VOC_CLASSES"), ("voc_aug", "VOC_CLASSES"), ("sbd", "VOC_CLASSES"),
     ("cityscapes", "CITYSCAPES_CLASSES"), ("ade20k", "ADE20K_CLASSES")],
)  # fmt: skip
def test_class_names_come_from_the_dataset_files_and_older_configs_get_them(dataset, table) -> None:
    from deeplab.config import labels
    from deeplab.config.upgrade import upgrade_config

    names = list(getattr(labels, table))
    cfg = train_config(compose_config([f"dataset={dataset}"]))
    assert cfg.dataset.label_names() == names
    # A config saved before configs/dataset/ listed the names: class_names null, the names implied.
    older = cfg.model_dump(mode="json")
    older["dataset"]["class_names"] = None
    assert train_config(older).dataset.label_names() == [f"class_{i}" for i in range(len(names))]
    assert train_config(upgrade_config(older)).dataset.label_names() == names
    assert make_card(older).labels.class_names == names
    # Another class count keeps what the config says (no official names to imply).
    older["dataset"]["num_classes"] = 3
    assert upgrade_config(older)["dataset"]["class_names"] is None
    if dataset == "voc":  # the names that configs/dataset/voc.yaml lists do not fit another class count
        with pytest.raises(
            ConfigError, match=r"^dataset.class_names has 21 names but dataset.num_classes is 5; give"
        ):
            train_config(compose_config(["dataset=voc", "dataset.num_classes=5"]))


def test_non_finite_weights_are_refused_in_one_line(trained_run, tmp_path) -> None:
    """A checkpoint saved after a run diverged is not scored as if it were a model."""
    ckpt = torch.load(trained_run[0] / "checkpoints" / "best.pt", weights_only=True)
    ckpt["model"]["head.classifier.weight"][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pt")
    with pytest.raises(
        CheckpointError, match=r"nan\.pt holds non-finite weights \(NaN or inf in head\.classifier\.weight\)"
    ):
        _evaluate(tmp_path / "nan.pt", tmp_path / "eval")


def test_torchvision_weights_of_another_class_count_load_with_that_count(tmp_path) -> None:
    """torchvision's DeepLabV3 fine-tuned to 5 classes: the count comes from the file, the names are generic."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    from deeplab.deploy.restore import load_trained_model

    torch.manual_seed(0)
    peer = deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5, aux_loss=False
    ).eval()
    torch.save(peer.state_dict(), tmp_path / "five.pth")
    model, card = load_trained_model(tmp_path / "five.pth")
    assert card.labels.num_classes == 5 and card.labels.class_names == [f"class_{i}" for i in range(5)]
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], peer(x)["out"], atol=1e-4, rtol=1e-4)


def test_a_model_folder_export_stopped_between_its_files_is_completed_when_read(
    trained_run, model_folder, tmp_path, monkeypatch, caplog
) -> None:
    import os
    import shutil

    from deeplab import atomicfile
    from deeplab.deploy.restore import load_trained_model

    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    old_card = (folder / "config.json").read_text()
    replace = os.replace

    def killed_after_the_first_rename(src, dst):
        if str(dst).endswith(("config.json", "README.md")):  # after model.safetensors: a kill between files
            raise SystemExit("killed")
        replace(src, dst)

    cfg = compose_config(
        [f"checkpoint={trained_run[0]}", "format=hub", f"output={folder}"], config_name="export"
    )
    monkeypatch.setattr(atomicfile.os, "replace", killed_after_the_first_rename)
    with one_thread(), pytest.raises(SystemExit):
        export(cfg, tmp_path)
    monkeypatch.undo()
    assert (folder / ".commit.json").exists() and (folder / "config.json").read_text() == old_card
    with caplog.at_level("WARNING"):
        model, card = load_trained_model(folder)
    assert "completed an export that was stopped half-way" in caplog.text
    assert not (folder / ".commit.json").exists() and sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]


def test_a_folder_that_is_a_model_folder_and_a_run_folder_says_which_it_reads(
    trained_run, model_folder, tmp_path, caplog
) -> None:
    import shutil

    folder = tmp_path / "both"
    shutil.copytree(model_folder, folder)
    shutil.copytree(trained_run[0] / "checkpoints", folder / "checkpoints")
    with caplog.at_level("WARNING"):
        assert locate(folder).kind == "hub"
    assert "is both a model folder and a run folder; reading the model folder" in caplog.text


def test_a_hub_endpoint_that_never_answers_is_one_line_within_the_timeout(tmp_path, monkeypatch) -> None:
    """HF_ENDPOINT at a server that accepts the connection and says nothing (it held deeplab.load for 264 s):
    the fetch gives up after DEEPLAB_HUB_TIMEOUT seconds, in one line."""
    import socket
    import time

    constants = pytest.importorskip("huggingface_hub.constants")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepted by the kernel, never read nor answered
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # read when huggingface_hub was first imported
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("DEEPLAB_HUB_TIMEOUT", "2")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.monotonic()
    try:
        with pytest.raises(CheckpointError) as e:
            deeplab.load("owner/silent-model")
    finally:
        server.close()
    assert time.monotonic() - started < 15
    message = str(e.value)
    assert (
        "\n" not in message
        and "could not fetch owner/silent-model from the Hugging Face hub within 2 s" in message
    )
