"""Training options: each loss through the trainer, class_weights=auto, model.init_from with
trainer.freeze_bn, activation checkpointing, AdamW's learning rates."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from helpers.configs import compose_config, one_thread, tiny_config, tiny_overrides
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50

from deeplab.artifacts.checkpoint import load_checkpoint
from deeplab.config import train_config
from deeplab.errors import ConfigError
from deeplab.models import build_model
from deeplab.models.batchnorm import freeze_batchnorm
from deeplab.models.pretrained import load_matching
from deeplab.train.optim import build_optimizer

BN_SUFFIXES = (".weight", ".bias", ".running_mean", ".running_var")


def bn_keys(model: nn.Module) -> list[str]:
    return [
        f"{name}{suffix}"
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for suffix in BN_SUFFIXES
    ]


@pytest.mark.parametrize("loss", ["ohem", "focal", "dice", "lovasz"])
def test_each_loss_trains(loss: str, tiny_data: Path, tmp_path: Path) -> None:
    from deeplab.train.engine import train

    with one_thread():
        metrics = train(tiny_config(tiny_data, loss=loss, **{"model.aux_head": "true"}), tmp_path / "run")
    assert 0 <= metrics["miou"] <= 1
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["config"]["loss"]["name"] == loss


def test_auto_class_weights_are_computed_once_and_kept_in_the_run_dir(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from deeplab.train.engine import train

    run = tmp_path / "run"
    with one_thread(), caplog.at_level(logging.INFO, logger="deeplab.train.engine"):
        train(tiny_config(tiny_data, **{"loss.class_weights": "auto"}), run)
    saved = json.loads((run / "class_weights.json").read_text())
    assert saved["classes"] == ["background", "disc", "square", "triangle"]
    pixels, weights = saved["pixels"], saved["weights"]
    shares = [n / sum(pixels) for n in pixels]
    median = sorted(shares)[1]  # torch's lower median of four
    assert weights == pytest.approx([median / s for s in shares])
    assert min(weights) == weights[0] < 1  # the background, the most frequent class, weighs least
    assert max(weights) == weights[shares.index(min(shares))] > 1
    assert "loss.class_weights (median frequency" in caplog.text
    # a resumed run reads them back instead of counting again
    (run / "class_weights.json").write_text(json.dumps({**saved, "weights": [1.0, 2.0, 3.0, 4.0]}))
    from deeplab.train.engine import _class_weights

    cfg = train_config(tiny_config(tiny_data, **{"loss.class_weights": "auto"}))
    assert _class_weights(cfg, None, run) == [1.0, 2.0, 3.0, 4.0]  # type: ignore[arg-type]


def test_init_from_a_checkpoint_with_frozen_batchnorm(
    trained_run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new run from a trained last.pt, with another class count, 3 iterations with BatchNorm frozen: every
    BatchNorm tensor equals the source's, convolutions moved, the new classifier was initialised afresh."""
    from deeplab.train.engine import train

    run_dir, _, data_dir = trained_run
    source_path = run_dir / "checkpoints" / "last.pt"
    source = load_checkpoint(source_path)["model"]
    overrides = tiny_overrides(
        data_dir, **{"model.init_from": source_path, "trainer.freeze_bn": "true", "trainer.max_iters": 3,
                     "dataset.class_names": "[background,disc,square]", "dataset.num_classes": 3,
                     "dataset.root": tmp_path / "data3", "trainer.eval_interval": 3, "trainer.ckpt_interval": 3},
    )  # fmt: skip
    with one_thread(), caplog.at_level(logging.INFO, logger="deeplab.train.engine"):
        train(compose_config(overrides), tmp_path / "run")
    new = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert new["iteration"] == 3
    state = new["model"]
    reference = build_model(tiny_config(data_dir))
    keys = bn_keys(reference)
    assert len(keys) > 100
    for k in keys:
        assert torch.equal(state[k], source[k]), k
    assert not torch.equal(state["backbone.conv1.weight"], source["backbone.conv1.weight"])
    assert not torch.equal(state["head.aspp.convs.0.0.weight"], source["head.aspp.convs.0.0.weight"])
    assert state["head.classifier.weight"].shape[0] == 3 != source["head.classifier.weight"].shape[0]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("initialised from"))
    assert "not loaded (initialised afresh): head.classifier.weight, head.classifier.bias" in line


def test_init_from_torchvision_weights_with_another_class_count(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model = build_model(
        compose_config(
            [
                "experiment=torchvision_deeplabv3_r50",
                "dataset.num_classes=5",
                "dataset.class_names=null",
                "backbone.pretrained=false",
            ]
        )
    )
    skipped = load_matching(model, tmp_path / "tv.pth")
    assert skipped == ["head.classifier.weight", "head.classifier.bias", "aux_head.4.weight",
                       "aux_head.4.bias"]  # fmt: skip
    assert torch.equal(model.backbone.layer4[2].conv2.weight, tv.backbone.layer4[2].conv2.weight)
    with pytest.raises(Exception, match="shares no tensor with this model"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
        load_matching(model, tmp_path / "other.pth")


def test_frozen_batchnorm_survives_syncbatchnorm_conversion() -> None:
    model = build_model(compose_config(["backbone=resnet_tiny"]))
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # a BatchNorm already converted is frozen too
    assert freeze_batchnorm(model) > 0
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(p.requires_grad for n, p in model.named_parameters() if "bn" in n)


def test_activation_checkpointing_gives_the_same_gradients_and_statistics() -> None:
    cfg = compose_config(["backbone=resnet_tiny", "model.aspp.dropout=0", "backbone.output_stride=8"])
    torch.manual_seed(0)
    plain = build_model(cfg).train()
    checkpointed = build_model(cfg).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.backbone.set_activation_checkpointing(True)
    x = torch.randn(2, 3, 49, 57)
    target = torch.randint(0, 21, (2, 49, 57))
    for model in (plain, checkpointed):
        nn.functional.cross_entropy(model(x)["out"], target).backward()
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for n, p in checkpointed.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-5, rtol=0), n
    # the recomputation does not count the batch twice in BatchNorm's running statistics
    for (n, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), n


def test_adamw_trains_the_backbone_at_a_fraction_of_the_learning_rate() -> None:
    cfg = train_config(compose_config(["backbone=resnet_tiny", "optim=adamw", "optim.lr=0.001"]))
    optimizer = build_optimizer(cfg.optim, build_model(cfg))
    assert isinstance(optimizer, torch.optim.AdamW)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx(
        {"backbone": 1e-4, "backbone_no_decay": 1e-4, "head": 1e-3, "head_no_decay": 1e-3}
    )
    decay = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decay["backbone"] == 0.01 and decay["backbone_no_decay"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.class_weights=[1,2]"], "loss.class_weights has 2 values but there are 21 classes"),
        (["backbone=mobilenet_v3_large", "trainer.activation_checkpointing=true"],
         "trainer.activation_checkpointing is offered for the ResNet backbones"),
        (["model.init_from=x.pt", "model.pretrained=torchvision", "backbone=resnet50"],
         "model.init_from and model.pretrained both give the starting weights"),
        (["backbone=resnet_tiny", "trainer.freeze_bn=true"], "trainer.freeze_bn=true would freeze BatchNorm at its"),
        (["experiment=voc_trainval_deeplabv3plus_r101_os8_finetune"], "give the trained weights to start from with"),
        (["loss=focal", "loss.gamma=-1"], "loss.gamma: input should be greater than or equal to 0"),
        (["loss=ohem", "+loss.class_weights=auto"], "loss.class_weights: unknown key"),
    ],
)  # fmt: skip
def test_option_mistakes_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train_config(compose_config(overrides))


def test_a_checkpoint_written_before_these_options_still_loads(trained_run, tmp_path: Path) -> None:
    """Checkpoints lack the keys added since (in_channels, init_from, freeze_bn, activation_checkpointing, the
    loss group): they are read with the values those runs trained with."""
    from deeplab.deploy.restore import load_trained_model

    run_dir, _, _ = trained_run
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    cfg = ckpt["config"]
    del cfg["dataset"]["in_channels"], cfg["model"]["init_from"]
    del cfg["trainer"]["freeze_bn"], cfg["trainer"]["activation_checkpointing"]
    cfg["loss"] = {"aux_weight": 0.4}
    del ckpt["card"]  # written before model cards: the card is made from the config
    torch.save(ckpt, tmp_path / "old.pt")
    _, card = load_trained_model(tmp_path / "old.pt")
    assert card.dataset.in_channels == 3 and card.model.init_from is None
    restored = train_config(load_checkpoint(tmp_path / "old.pt")["config"])  # what a resumed run reads
    assert restored.loss.name == "cross_entropy" and not restored.trainer.freeze_bn
    assert not restored.trainer.activation_checkpointing


def test_a_resume_that_drops_the_ema_or_changes_accumulation_says_so(tiny_data, tmp_path, caplog) -> None:
    from deeplab.train.engine import train

    run_dir = tmp_path / "run"
    options = {"trainer.max_iters": 2, "trainer.batch_size": 4, "trainer.ema.decay": 0.9, "logger": "[]"}
    with one_thread():
        train(tiny_config(tiny_data, **options), run_dir)
        resumed = {**options, "trainer.max_iters": 3, "trainer.resume": "auto", "trainer.ema.decay": "null",
                   "trainer.accumulate": 2}  # fmt: skip
        with caplog.at_level(logging.WARNING):
            train(tiny_config(tiny_data, **resumed), run_dir)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "holds EMA weights but trainer.ema.decay is null: the resumed run drops them" in m for m in messages
    )
    assert any(m.startswith("trainer.accumulate: 1 micro-batches per step in") and "micro-batches of 2" in m
               for m in messages)  # fmt: skip
