"""The evaluator: independent of batch size, MS+flip reduces to plain inference, DDP equals one process."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers.ddp import join_group, spawn
from PIL import Image

from deeplab import data
from deeplab.data.loaders import build_val_loader
from deeplab.evaluation.loop import WHOLE, evaluate
from deeplab.models import build_model
from deeplab.models.inference import predict_probs
from deeplab.runtime import Runtime

CPU = Runtime(torch.device("cpu"), None, False)

SIZES = [(33, 45), (40, 40), (29, 51), (40, 40), (37, 30)]


def make_folder_dataset(root: Path) -> None:
    """Five images of different sizes with 3-class masks (and some 255 pixels)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, (h, w) in enumerate(SIZES):
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4 : h // 2, w // 4 : w // 2] = 1
            mask[h // 2 :, w // 2 :] = 2
            mask[0, :] = 255
            Image.fromarray(img).save(root / split / "images" / f"im{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"im{i}.png")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from helpers.configs import compose_config

    root = tmp_path_factory.mktemp("folder")
    make_folder_dataset(root)
    cfg = compose_config(
        [
            "dataset=folder", "model=deeplabv3plus", "backbone=resnet_tiny", "model.aspp.channels=16",
            "model.decoder.channels=16", "model.decoder.low_level_channels=8",
            f"dataset.train.images={root}/train/images", f"dataset.train.masks={root}/train/masks",
            f"dataset.val.images={root}/val/images", f"dataset.val.masks={root}/val/masks",
            "dataset.num_classes=3", "trainer.crop_size=32",
        ]
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    dataset = data.build_dataset(cfg, "val")
    return cfg, model, dataset


def run_eval(cfg, model, dataset, batch_size: int, **kwargs) -> torch.Tensor:
    loader = build_val_loader(dataset, batch_size, num_workers=0)
    normalize = CPU.normalizer(cfg.dataset.mean, cfg.dataset.std)
    ev = WHOLE.model_copy(update=kwargs)
    cm = evaluate(model, loader, CPU, normalize, ev, num_classes=3, ignore_index=255).cm
    return cm.matrix.clone()


def test_batch_size_does_not_change_the_result(setup):
    cfg, model, dataset = setup
    m1 = run_eval(cfg, model, dataset, 1)
    assert m1.sum() == sum(h * w - w for h, w in SIZES)  # every pixel but the 255 rows, counted once
    assert torch.equal(m1, run_eval(cfg, model, dataset, 2))
    assert torch.equal(m1, run_eval(cfg, model, dataset, 5))


def test_single_scale_no_flip_equals_plain_inference(setup):
    cfg, model, dataset = setup
    x = torch.randn(2, 3, 37, 41)
    with torch.no_grad():
        plain = model(x)["out"].argmax(1)
        ms = predict_probs(model, x, scales=[1.0], flip=False).argmax(1)
    assert torch.equal(plain, ms)
    m_plain = run_eval(cfg, model, dataset, 1)
    assert torch.equal(m_plain, run_eval(cfg, model, dataset, 1, scales=[1.0], flip=False))


def test_flip_averages_flipped_predictions(setup):
    _, model, _ = setup
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        p = torch.softmax(model(x)["out"], 1)
        pf = torch.softmax(model(x.flip(-1))["out"], 1).flip(-1)
        got = predict_probs(model, x, scales=[1.0], flip=True)
    assert torch.allclose(got, (p + pf) / 2, atol=1e-6)


def test_sliding_window_covers_the_image(setup):
    _, model, _ = setup
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        probs = predict_probs(model, x, mode="slide", window=33, overlap=0.5)
        whole = predict_probs(model, x, mode="slide", window=80, overlap=0.5)  # one padded window
    assert probs.shape == (1, 3, 50, 70)
    assert torch.allclose(probs.sum(1), torch.ones(1, 50, 70), atol=1e-5)
    assert whole.shape == (1, 3, 50, 70)


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str, cfg_yaml: str) -> None:
    from omegaconf import OmegaConf

    join_group(rank, world, init_file)
    cfg = OmegaConf.create(cfg_yaml)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    dataset = data.build_dataset(cfg, "val")
    loader = build_val_loader(dataset, 2, num_workers=0, rank=rank, world_size=world)
    normalize = CPU.normalizer(cfg.dataset.mean, cfg.dataset.std)
    cm = evaluate(model, loader, CPU, normalize, num_classes=3, ignore_index=255).cm
    if rank == 0:
        torch.save(cm.matrix, out_file)
    dist.destroy_process_group()


@pytest.mark.slow  # test_torchrun_two_processes_train_and_agree checks the same equality by default
def test_two_process_ddp_evaluation_equals_one_process(setup, tmp_path):
    from omegaconf import OmegaConf

    cfg, model, dataset = setup
    single = run_eval(cfg, model, dataset, 2)
    out = tmp_path / "cm.pt"
    spawn(_ddp_worker, tmp_path, str(out), OmegaConf.to_yaml(cfg, resolve=True))
    assert torch.equal(torch.load(out, weights_only=True), single)


def test_whole_images_too_large_for_memory_get_one_warning(setup, monkeypatch, caplog):
    import deeplab.evaluation.loop as evaluation

    cfg, model, dataset = setup
    monkeypatch.setattr(evaluation, "_warned_memory", False)
    monkeypatch.setattr(evaluation, "free_memory", lambda device: 2_000 * evaluation.BYTES_PER_PIXEL)
    with caplog.at_level(logging.WARNING):
        run_eval(cfg, model, dataset, 1)
        run_eval(cfg, model, dataset, 1, mode="slide", window=33)
    warnings = [r.getMessage() for r in caplog.records if "eval.mode=slide" in r.getMessage()]
    assert len(warnings) == 1 and "evaluating whole 45x33 images needs about 0.0 GB" in warnings[0]
