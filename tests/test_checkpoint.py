from __future__ import annotations

import builtins
import errno
import os
import pickle
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from deeplab.artifacts import checkpoint as ckpt
from deeplab.artifacts.checkpoint import load_checkpoint, load_file, load_model_state, save_checkpoint
from deeplab.artifacts.compat import check_compatible, config_diff
from deeplab.errors import CheckpointError
from deeplab.train.resume import rng_state, set_rng_state


def small_state(value: float) -> dict:
    return {
        "model": {"w": torch.full((64, 64), value)},
        "config": {"backbone": {"name": "resnet50"}},
        "step": 3,
    }


# --- atomic saving ---------------------------------------------------------------------------------


def test_save_then_load_round_trip_and_creates_dirs(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(path, small_state(1.0))
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(64, 64))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, small_state(1.0))

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + b"x" * 1000)  # some bytes reach the temporary file first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", save_half_then_fail)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, small_state(2.0))
    message = str(info.value)
    assert str(path) in message and "No space left on device" in message and "\n" not in message
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(64, 64))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_disk_full_inside_torch_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The real torch.save writing to a file that fails after a few kilobytes, as a full disk does."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, small_state(1.0))
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 2048:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(ckpt.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(CheckpointError, match="could not write checkpoint"):
        save_checkpoint(path, small_state(2.0))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(64, 64))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_unwritable_target_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the run dir should be")
    with pytest.raises(CheckpointError, match="could not write checkpoint .*not_a_dir"):
        save_checkpoint(blocker / "checkpoints" / "last.pt", small_state(1.0))


def test_stale_temporary_files_of_killed_writers_are_removed(tmp_path):
    path = tmp_path / "last.pt"
    stale = tmp_path / ".last.pt.999999999.deadbeef.tmp"  # no such pid
    live = tmp_path / f".last.pt.{os.getppid()}.cafe.tmp"  # a running process may still write it
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    save_checkpoint(path, small_state(1.0))
    assert not stale.exists() and live.exists()


# --- loading untrusted or damaged files ----------------------------------------------------------------


class RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsPython:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [RunsShellCommand, RunsPython])
def test_pickle_that_runs_code_is_refused(tmp_path, payload):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "config": payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "refused" in message and "could run code" in message and str(path) in message
    assert not marker.exists()
    # The file really is harmful: an unsafe load runs its code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_file_says_truncated(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, small_state(1.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt is truncated"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated"):
        load_file(path, "weights")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint " * 20)
    with pytest.raises(CheckpointError, match="garbage.pt") as info:
        load_file(garbage)
    assert "truncated" not in str(info.value)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(CheckpointError, match="not a file written by torch.save"):
        load_file(raw)
    with pytest.raises(CheckpointError, match="weights file not found: .*nope.pt"):
        load_file(tmp_path / "nope.pt", "weights")


def test_load_checkpoint_explains_a_bare_state_dict(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(nn.Linear(2, 3).state_dict(), path)
    with pytest.raises(CheckpointError, match="bare state dict \\(2 tensors\\)"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="holds list"):
        load_checkpoint(path)


# --- architecture checks ----------------------------------------------------------------------------


def test_config_diff_names_the_differing_keys(cfg_factory):
    saved = cfg_factory(["backbone=resnet50", "model=deeplabv3plus"])
    current = cfg_factory(
        ["backbone=resnet101", "backbone.output_stride=8", "backbone.pretrained=false", "dataset=synthetic"]
    )
    diffs = config_diff(saved, current)
    assert "backbone.name: checkpoint resnet50, config resnet101" in diffs
    assert "backbone.output_stride: checkpoint 16, config 8" in diffs
    assert "dataset.num_classes: checkpoint 21, config 4" in diffs
    assert not any("pretrained" in d for d in diffs)  # initial weights do not change the model
    assert len(diffs) == 3
    # Plain dicts work the same, and a config equal to itself has no differences.
    plain = OmegaConf.to_container(saved, resolve=False)
    assert config_diff(plain, saved) == []
    assert config_diff({"model": {"aux_head": True}}, {"model": {}}) == [
        "model.aux_head: checkpoint True, config <missing>"
    ]
    # The roles declared in the schema choose what is compared: the optimiser only when asked for.
    assert config_diff({"optim": {"lr": 0.1}}, {"optim": {"lr": 0.2}}) == []
    assert config_diff({"optim": {"lr": 0.1}}, {"optim": {"lr": 0.2}}, ("optimiser",)) == [
        "optim.lr: checkpoint 0.1, config 0.2"
    ]


def test_check_compatible_message_names_keys(tmp_path, cfg_factory):
    saved = cfg_factory(["model=deeplabv3"])
    current = cfg_factory(["model=deeplabv3plus", "model.aux_head=true"])
    with pytest.raises(CheckpointError) as info:
        check_compatible(saved, current, tmp_path / "best.pt")
    message = str(info.value)
    assert "best.pt" in message and "model.decoder.enabled: checkpoint False, config True" in message
    assert "model.aux_head" in message and "model.name" in message and "\n" not in message
    check_compatible(saved, cfg_factory(["model=deeplabv3", "backbone.pretrained=false"]), "x.pt")


class Tiny(nn.Module):
    def __init__(self, classes: int, aux: bool = False):
        super().__init__()
        self.backbone = nn.Conv2d(3, 4, 3)
        self.classifier = nn.Conv2d(4, classes, 1)
        if aux:
            self.aux = nn.Conv2d(4, classes, 1)


def test_load_model_state_names_config_keys_or_parameters():
    state = Tiny(21).state_dict()
    target = Tiny(4)
    saved_cfg = {"dataset": {"num_classes": 21}, "model": {"name": "deeplabv3"}}
    cfg = {"dataset": {"num_classes": 4}, "model": {"name": "deeplabv3"}}
    with pytest.raises(CheckpointError, match="dataset.num_classes: checkpoint 21, config 4"):
        load_model_state(target, state, "a.pt", saved_cfg, cfg)
    with pytest.raises(
        CheckpointError, match=r"shape differs: classifier.weight \(21, 4, 1, 1\) vs \(4, 4, 1, 1\)"
    ):
        load_model_state(target, state, "a.pt")
    with pytest.raises(CheckpointError, match="missing: aux.weight, aux.bias"):
        load_model_state(Tiny(21, aux=True), state, "a.pt")
    with pytest.raises(CheckpointError, match="unexpected: aux.weight"):
        load_model_state(Tiny(21), Tiny(21, aux=True).state_dict(), "a.pt")

    # A matching state dict loads, also when saved from a DDP wrapper.
    model = Tiny(21)
    load_model_state(model, {f"module.{k}": v for k, v in state.items()}, "a.pt")
    assert torch.equal(model.classifier.weight, state["classifier.weight"])


# --- RNG states ---------------------------------------------------------------------------------------


def draw() -> tuple:
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.randn()  # and in NumPy's
    state = rng_state()
    expected = draw()
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    restored = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    random.seed(10)
    np.random.seed(20)
    torch.manual_seed(30)
    assert draw() != expected
    set_rng_state(restored)
    assert draw() == expected


def test_files_replaced_together_clear_the_temporaries_of_a_killed_write(tmp_path):
    """atomic_files (a model folder, an OpenVINO model.xml + model.bin): a write killed before its journal
    leaves its temporary files; the next write of the same files removes them."""
    from deeplab.atomicfile import atomic_files

    xml, weights = tmp_path / "model.xml", tmp_path / "model.bin"
    stale = [
        tmp_path / ".model.xml.999999999.deadbeef.tmp.xml",
        tmp_path / ".model.bin.999999999.deadbeef.tmp.bin",
    ]
    for p in stale:
        p.write_bytes(b"partial")
    with atomic_files([xml, weights]) as (xml_tmp, weights_tmp):
        xml_tmp.write_text("<net/>")
        weights_tmp.write_bytes(b"\0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
