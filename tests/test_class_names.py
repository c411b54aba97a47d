"""Class names reach tables, legends and model cards: a control character is refused in one line, a | or < is
escaped in Markdown, a name no font draws is shown as ? with a warning, and a card whose labels disagree with
its dataset section is refused."""

from __future__ import annotations

import json
import logging
import re

import pytest
from helpers.configs import compose_config, tiny_config
from omegaconf import OmegaConf

from deeplab.artifacts.card import make_card, read_card
from deeplab.config import train_config
from deeplab.errors import CheckpointError, ConfigError
from deeplab.evaluation.report import per_class_markdown
from deeplab.visualize import font_files, legend_font, make_legend


def config_with_names(names: list[str]):
    cfg = compose_config(["dataset=folder", "dataset.num_classes=3", "dataset.train.images=a",
                          "dataset.train.masks=b", "dataset.val.images=c", "dataset.val.masks=d"])  # fmt: skip
    OmegaConf.update(cfg, "dataset.class_names", names, force_add=True)
    return cfg


@pytest.mark.parametrize("bad", ["road\nside", "tab\there", "esc\x1b[31m", "zero\u200bwidth"])
def test_a_control_character_in_a_class_name_is_one_line_naming_the_class(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        train_config(config_with_names(["background", bad, "car"]))
    message = str(e.value)
    assert "\n" not in message and message.startswith("dataset.class_names: the name of class 1, ")
    assert "one line of printable text" in message
    train_config(config_with_names(["background", "道路 (paved) | 🚗", "café"]))  # printable: accepted


def test_markdown_tables_escape_what_would_break_them() -> None:
    rows = [{"class": "road | paved", "iou": 0.5, "recall": 0.5, "precision": 0.5, "true_share": 0.5,
             "predicted_share": 0.5}, {"class": "<b>car</b>", "iou": 0.25, "recall": 0.25, "precision": 0.25,
             "true_share": 0.5, "predicted_share": 0.5}]  # fmt: skip
    lines = per_class_markdown(rows).splitlines()
    cells = [line.replace("\\|", "").count("|") for line in lines]
    assert len(set(cells)) == 1  # every row has the header's columns
    assert "road \\| paved" in lines[2] and "&lt;b&gt;car&lt;/b&gt;" in lines[3]


def test_names_no_font_draws_are_question_marks_with_a_warning(caplog) -> None:
    legend_font.cache_clear()
    with caplog.at_level(logging.WARNING):
        font_file, text = legend_font("road\n\U0010fffc\U0010fffb lane")  # private use: in no font
        legend = make_legend([("road", (128, 64, 128)), ("\U0010fffc\U0010fffb lane", (0, 0, 255))], 200, 300)
    assert text == "road\n?? lane" and legend is not None
    assert "no font on this machine draws" in caplog.text and "shown as '?'" in caplog.text
    if font_files():  # a system font with accents (DejaVu Sans), where one is installed
        assert legend_font("café") == (font_files()[0], "café")


def test_a_card_whose_labels_disagree_with_its_dataset_is_refused(tiny_data) -> None:
    card = make_card(train_config(tiny_config(tiny_data))).model_dump(mode="json")
    read_card(card, "config.json")
    for change, expected in (
        (
            lambda c: c["labels"].update(class_names=c["labels"]["class_names"][:2]),
            "labels.class_names has 2 names",
        ),
        (lambda c: c["labels"].update(palette=c["labels"]["palette"][:1]), "labels.palette has 1 colours"),
        (lambda c: c["labels"].update(num_classes=7), "labels.num_classes is 7 but dataset.num_classes is 4"),
        (lambda c: c["labels"]["class_names"].__setitem__(1, "disc\nx"), "holds the control character '\\n'"),
    ):
        bad = json.loads(json.dumps(card))
        change(bad)
        with pytest.raises(CheckpointError, match="config.json: .*" + re.escape(expected)):
            read_card(bad, "config.json")
