"""The schema's building blocks: strict sections, the value types every section uses, and their checks."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from deeplab.errors import ConfigError

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Label = Annotated[int, Field(ge=0, le=255)]
Channel = Annotated[int, Field(ge=0, le=255)]
Color = Annotated[list[Channel], Field(min_length=3, max_length=3)]
MetricName = Literal["miou", "pixel_acc", "mean_acc", "fwiou"]

OUTPUT_STRIDES = (8, 16)
TORCHVISION_DEEPLABS = ("resnet50", "resnet101", "mobilenet_v3_large")  # backbones of its DeepLabV3 weights


class Section(BaseModel):
    """A config node: strict types (no "5" for 5, no 1 for true), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def flag_or_path(flags: tuple[Any, ...], words: str) -> BeforeValidator:
    """A value that is one of `flags` (matched by identity for true/false/null) or a non-empty path."""

    def check(value: Any) -> Any:
        if any(value is f for f in flags if f is None or isinstance(f, bool)) or value in [
            f for f in flags if isinstance(f, str)
        ]:
            return value
        if isinstance(value, str) and value:
            return value
        raise ValueError(f"must be {words} or a path to a file")

    return BeforeValidator(check)


def _auto_or_bool(value: Any) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError("must be auto, true or false")


def _device(value: Any) -> Any:
    if isinstance(value, str):
        kind, _, index = value.partition(":")
        if value in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and index.isdigit()):
            return value
    raise ValueError("must be auto, cpu, cuda, cuda:N or mps")


# YAML reads a bare `off` as false.
Amp = Annotated[Literal["auto", "bf16", "fp16", "off"], BeforeValidator(lambda v: "off" if v is False else v)]
"""auto: bf16 on CUDA, and on a CPU that computes bf16 natively (AVX512-BF16 or AMX); off (float32) elsewhere."""
Flag = Annotated[Literal["auto"] | bool, BeforeValidator(_auto_or_bool)]
"""channels_last: auto is on with CUDA and with CPU bf16, off otherwise."""
Device = Annotated[str, BeforeValidator(_device)]


def check_class_names(names: list[str], key: str) -> None:
    """Class names are one line of printable text each: they head table columns and are drawn in legends. A
    control character (a newline, a tab, an escape) is one ConfigError naming the class."""
    for i, name in enumerate(names):
        bad = next((ch for ch in name if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")), None)
        if bad is not None:
            raise ConfigError(
                f"{key}: the name of class {i}, {name!r}, holds the control character {bad!r}; a class name is "
                "one line of printable text"
            )
