"""From a composed DictConfig to typed sections: validation, with every mistake as one line naming the key."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue
from pydantic import BaseModel, ValidationError

from deeplab.config.base import Section
from deeplab.config.entries import DemoConfig, EvaluateConfig, ExportConfig, PredictConfig, ServeConfig
from deeplab.config.train import TrainConfig
from deeplab.errors import ConfigError, first_line


def to_plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A composed config as plain containers, interpolations resolved; `???` left unset names its key."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as e:
        key = e.full_key or "a key"
        raise ConfigError(f"{key} is not set; give it on the command line, e.g. {key}=...") from None
    except InterpolationResolutionError as e:
        raise ConfigError(f"{e.full_key}: {first_line(e)}") from None


def _where(loc: tuple[Any, ...], data: Any) -> tuple[str, Any, bool]:
    """(dotted key, the value there, whether it exists) of a pydantic error location.

    Union tags and member names in `loc` (e.g. ("dataset", "voc", "root")) are not keys of the input and
    are skipped; list positions become [i].
    """
    key, node, found = "", data, True
    for i, part in enumerate(loc):
        if isinstance(node, Mapping):
            if part in node:
                key, node = f"{key}.{part}" if key else str(part), node[part]
            elif i == len(loc) - 1 and isinstance(part, str):
                key, node, found = f"{key}.{part}" if key else part, None, False
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            key, node = f"{key}[{part}]", node[part]
        else:
            break
    return key, node, found


def _siblings(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section that holds loc[-1], for "did you mean" hints."""
    fields: Any = model.model_fields
    for part in loc[:-1]:
        field = fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if annotation is None or not hasattr(annotation, "model_fields"):
            return []
        fields = annotation.model_fields
    return list(fields)


def _section_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys of the section at loc (a nested model's fields), or [] when loc is not a section."""
    fields: Any = model.model_fields
    annotation: Any = None
    for part in loc:
        field = fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if annotation is None or not hasattr(annotation, "model_fields"):
            return []
        fields = annotation.model_fields
    return list(fields) if annotation is not None else []


def error_message(e: ValidationError, data: Mapping[str, Any], model: type[BaseModel]) -> str:
    """One line naming the key of the first error, e.g. "trainer.batch_size: must be >= 1, got 0"."""
    err = e.errors()[0]
    key, value, found = _where(tuple(err["loc"]), data)
    if isinstance(value, list):
        # A key that takes a number or a list (trainer.crop_size): a list is judged by the list branch.
        branch = [x for x in e.errors() if any(str(part).startswith("list[") for part in x["loc"])]
        if branch and _where(tuple(branch[0]["loc"]), data)[0] == key:
            err = branch[0]
            key, value, found = _where(tuple(err["loc"]), data)
    kind = err["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), _siblings(model, tuple(err["loc"])), n=1)
        parent = key.rpartition(".")[0]
        hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
        return f"{key}: unknown key{hint}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        keys = _section_keys(model, tuple(err["loc"]))
        if keys:  # a section given one value: `trainer.ema=0.9` meant `trainer.ema.decay=0.9`
            return (
                f"{key} is a section, not a value (its keys: {', '.join(keys)}); set one of its keys, e.g. "
                f"{key}.{keys[0]}={value}"
            )
    if kind == "missing" or not found:
        return f"{key} is missing from the config; add it (see configs/ for its default)"
    if kind == "union_tag_invalid":
        tag = err["ctx"]["discriminator"].strip("'")
        return (
            f"{key}.{tag}: unknown {key} {err['ctx']['tag']!r}; choose one of {err['ctx']['expected_tags']}"
        )
    message = err["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    more = len({_where(tuple(x["loc"]), data)[0] for x in e.errors()}) - 1
    tail = f" ({more} more problem{'s' if more > 1 else ''} in the config)" if more > 0 else ""
    return f"{key}: {message}, got {value!r}{tail}"


def validate(model: type[Section], cfg: DictConfig | Mapping[str, Any]) -> Any:
    """cfg checked against `model`; a mistake raises ConfigError naming the key."""
    if isinstance(cfg, model):
        return cfg
    data = to_plain(cfg)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(error_message(e, data, model)) from None


def train_config(cfg: TrainConfig | DictConfig | Mapping[str, Any]) -> TrainConfig:
    return validate(TrainConfig, cfg)


def evaluate_config(cfg: EvaluateConfig | DictConfig | Mapping[str, Any]) -> EvaluateConfig:
    return validate(EvaluateConfig, cfg)


def export_config(cfg: ExportConfig | DictConfig | Mapping[str, Any]) -> ExportConfig:
    return validate(ExportConfig, cfg)


def predict_config(cfg: PredictConfig | DictConfig | Mapping[str, Any]) -> PredictConfig:
    return validate(PredictConfig, cfg)


def demo_config(cfg: DemoConfig | DictConfig | Mapping[str, Any]) -> DemoConfig:
    return validate(DemoConfig, cfg)


def serve_config(cfg: ServeConfig | DictConfig | Mapping[str, Any]) -> ServeConfig:
    return validate(ServeConfig, cfg)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested dicts under dotted keys: {"a": {"b": 1}} -> {"a.b": 1}; lists are leaves."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def config_dir() -> Path:
    """The configs/ folder of this checkout."""
    return Path(__file__).resolve().parents[2] / "configs"
