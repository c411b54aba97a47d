"""Messages for the user's mistakes found by the red team: a one-logit model's class name, channels-first .npy
images, Cityscapes masks with ids outside the official table, a video without frames, an input of an unknown
file type."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.configs import compose_config, tiny_config
from helpers.fake_data import write_cityscapes
from PIL import Image

from deeplab.config import train_config
from deeplab.data import load_split
from deeplab.data.check import main as check_main
from deeplab.data.reading import read_image
from deeplab.deploy.predict import predict
from deeplab.errors import ConfigError, DatasetError

FOLDER = [
    "dataset=folder", "dataset.train.images=imgs", "dataset.train.masks=masks", "dataset.val.images=imgs",
    "dataset.val.masks=masks",
]  # fmt: skip


def test_a_one_logit_model_calls_its_class_by_its_name_or_foreground() -> None:
    binary = train_config(compose_config([*FOLDER, "dataset.num_classes=1"])).dataset
    assert binary.label_names() == ["background", "foreground"]  # was class_0
    named = train_config(compose_config([*FOLDER, "dataset.num_classes=1", "dataset.class_names=[roof]"]))
    assert named.dataset.label_names() == ["background", "roof"]


def test_a_channels_first_npy_is_named_so(tmp_path: Path) -> None:
    np.save(tmp_path / "chw.npy", np.zeros((3, 40, 56), np.uint8))
    with pytest.raises(DatasetError) as info:
        read_image(tmp_path / "chw.npy", 3)
    message = str(info.value)
    assert "(3, 40, 56)" in message and "looks channels-first" in message and "(height, width, 3)" in message
    assert "56 channels" not in message
    np.save(tmp_path / "five.npy", np.zeros((40, 56, 5), np.uint8))
    with pytest.raises(
        DatasetError, match=r"shape \(40, 56, 5\) but dataset.in_channels is 3; expected \(height"
    ):
        read_image(tmp_path / "five.npy", 3)


def test_cityscapes_ids_outside_the_official_table_are_listed_and_warned_once(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_cityscapes(tmp_path / "cityscapes", {"train": {"aachen": 3}}, size=(8, 12))
    masks = sorted((root / "gtFine" / "train" / "aachen").glob("*_labelIds.png"))
    for path, value in zip(masks[:2], (40, 200)):
        ids = np.array(Image.open(path))
        ids[:2, :3] = value  # 6 pixels of an id that no Cityscapes label has
        Image.fromarray(ids, mode="L").save(path)
    overrides = ["dataset=cityscapes", f"dataset.root={root}"]
    assert check_main([*overrides, "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert out.count("not Cityscapes labelIds (0..33), so 6 pixels are ignored") == 2
    assert "{40}" in out and "{200}" in out and masks[0].name in out and masks[1].name in out
    # Training reads them as ignored, with one warning for the whole dataset.
    train = load_split(train_config(compose_config(overrides)), "train", augment=False)
    with caplog.at_level(logging.WARNING):
        mapped = [train.load_mask(i)[0] for i in range(len(train))]
    assert (mapped[0][:2, :3] == 255).all()
    warnings = [r for r in caplog.records if "not Cityscapes labelIds" in r.getMessage()]
    assert len(warnings) == 1 and "warned once" in warnings[0].getMessage()


def test_a_video_without_frames_says_so(trained_run, tmp_path: Path) -> None:
    best = trained_run[0] / "checkpoints" / "best.pt"
    recorded = tmp_path / "stopped.mp4"  # a recording stopped before its first frame
    cv2.VideoWriter(str(recorded), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48)).release()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "notes.mp4"
    junk.write_text("a text file named .mp4\n" * 20)
    for video, expected in (
        (recorded, r"stopped.mp4 has no frames: its MP4/QuickTime container holds no video stream"),
        (empty, r"empty.mp4 is empty \(0 bytes\): it has no frames"),
        (junk, r"cannot read video .*notes.mp4: it is not a video file OpenCV can open \(.avi, .mkv"),
    ):
        cfg = compose_config(
            [f"checkpoint={best}", f"input={video}", f"output={tmp_path / 'out'}"], "predict"
        )
        with pytest.raises(DatasetError, match=expected):
            predict(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no overlay video of nothing, no empty folder


def test_an_input_of_an_unknown_type_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "x.xyz").write_bytes(b"\x00" * 16)
    cfg = compose_config(
        ["checkpoint=model.pt", f"input={tmp_path / 'x.xyz'}", f"output={tmp_path / 'o'}"], "predict"
    )
    with pytest.raises(ConfigError) as info:
        predict(cfg, tmp_path / "o")
    message = str(info.value)
    assert message.startswith("input: ") and "x.xyz is not a file type predict reads" in message
    assert ".jpg" in message and ".npy" in message and ".mp4" in message and "unreadable" not in message


def test_sizes_that_would_only_fail_at_allocation_are_one_line(tiny_data, tmp_path, monkeypatch) -> None:
    """A key that sizes a tensor has a bound; a model whose training state exceeds the free memory is refused
    before anything is allocated, with its size."""
    import deeplab.train.engine as engine
    from deeplab.config import train_config
    from deeplab.train.engine import train

    for override, message in (
        ("model.aspp.channels=1000000000", "model.aspp.channels: input should be less than or equal to 8192"),
        (
            "model.decoder.channels=99999",
            "model.decoder.channels: input should be less than or equal to 8192",
        ),
        ("trainer.crop_size=100000", "trainer.crop_size: input should be less than or equal to 16384"),
        ("trainer.batch_size=10000000", "trainer.batch_size: input should be less than or equal to 4096"),
    ):
        with pytest.raises(ConfigError) as e:
            train_config(tiny_config(tiny_data, **dict([override.split("=")])))
        assert str(e.value).startswith(message)
    monkeypatch.setattr(engine, "free_memory", lambda device: 2**20)  # 1 MB free
    with pytest.raises(ConfigError) as e:
        train(tiny_config(tiny_data), tmp_path / "run")
    assert re.match(
        r"^the model has [\d,.]+M parameters: .* need [\d.]+ GB, more than the 0.0 GB free on cpu",
        str(e.value),
    )
