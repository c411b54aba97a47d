"""The time left shown in the progress line."""

from __future__ import annotations

import logging
import re

import pytest
from helpers.configs import one_thread, tiny_config

from deeplab.train.engine import train
from deeplab.train.eta import Eta


def test_the_time_left_follows_a_smoothed_pace():
    eta = Eta(smoothing=0.5)
    assert eta.left(100) == "?"
    eta.update(10.0, 10)  # 1 s per iteration
    assert eta.left(3725) == "1:02:05"
    eta.update(30.0, 10)  # a slower interval moves the pace half-way: 2 s
    assert eta.seconds_per_iter == pytest.approx(2.0) and eta.left(30) == "0:01:00"
    eta.update(5.0, 0)  # an interval without iterations changes nothing
    assert eta.left(0) == "0:00:00"


def test_the_progress_line_shows_it_alone_and_train_log_keeps_the_losses(tiny_data, tmp_path, capsys, caplog):
    with one_thread(), caplog.at_level(logging.INFO, logger="deeplab.train.engine"):
        train(tiny_config(tiny_data, logger="[]", **{"trainer.max_iters": 2}), tmp_path / "run")
    err = capsys.readouterr().err
    assert "eta=0:00:0" in err
    # one time left: tqdm's own estimate ("[00:01<00:02, ...]") is not shown beside it
    assert "train: " in err and not re.search(r"train: [^\r\n]*\[\d+:\d+<\d+:\d+", err), err[-500:]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iter 1 | loss ")]
    assert lines and re.fullmatch(
        r"iter 1 \| loss [\d.]+ \| lr [\d.e-]+ \| [\d.]+ img/s \| eta \d:\d\d:\d\d", lines[0]
    )
