"""The role of each config key, declared once next to the key in deeplab/config.py and read here.

From the declarations follow what a resumed run must share with its checkpoint (the architecture, the data,
the optimiser), what `evaluate.py` may override (where the data lies), what the model card holds, and how
the config of an older checkpoint is upgraded (a key added later gets the value those runs trained with).
A key without a role of its own has the role of the section holding it; a section without one is "run":
how training runs (trainer, schedule, loss, logger, ...), free to change when a run resumes.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

Kind = Literal["architecture", "weights", "data", "location", "optimiser", "run"]


@dataclass(frozen=True)
class Role:
    """architecture: decides the model's parameters; weights: where they start from (not the model itself);
    data: what the model learnt from (classes, colours, normalisation, splits, sampling); location: where the
    data lies and how it is read (evaluate.py may override it); optimiser: the state last.pt holds."""

    kind: Kind


@dataclass(frozen=True)
class Added:
    """A key added after checkpoints were first written: `older` is the value that reproduces how those
    checkpoints were trained, filled in when one is read."""

    older: Any


ARCHITECTURE = Role("architecture")
WEIGHTS = Role("weights")
DATA = Role("data")
LOCATION = Role("location")
OPTIMISER = Role("optimiser")


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation admits: itself, or the members of a union (Optional included)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _marker(metadata: list[Any], kind: type) -> Any:
    return next((m for m in metadata if isinstance(m, kind)), None)


def key_roles(schema: type[BaseModel], prefix: str = "", inherited: Kind = "run") -> dict[str, Kind]:
    """Every key of the schema (sections and leaves, dotted; union members merged) -> its role."""
    roles: dict[str, Kind] = {}
    for name, field in schema.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        role = _marker(field.metadata, Role)
        kind = role.kind if role else inherited
        roles[key] = kind
        for member in _models(field.annotation):
            roles.update(key_roles(member, key, kind))
    return roles


def role_of(key: str, roles: Mapping[str, Kind]) -> Kind:
    """The role of a dotted key, also of one the schema no longer has (that of its nearest known section)."""
    while key:
        if key in roles:
            return roles[key]
        key = key.rpartition(".")[0]
    return "run"


def keys_with(roles: Mapping[str, Kind], kind: Kind, section: str) -> list[str]:
    """The names of the keys directly under `section` whose role is `kind`, e.g. dataset's location keys."""
    start = section + "."
    return sorted(
        {
            k[len(start) :]
            for k, v in roles.items()
            if k.startswith(start) and "." not in k[len(start) :] and v == kind
        }
    )


def _member(field_models: list[type[BaseModel]], node: Mapping[str, Any]) -> type[BaseModel] | None:
    """The union member a config node is: the one whose `name` literal holds node["name"] (or the only one)."""
    if len(field_models) == 1:
        return field_models[0]
    for model in field_models:
        name = model.model_fields.get("name")
        if name is not None and node.get("name") in typing.get_args(name.annotation):
            return model
    return None


def fill_added(schema: type[BaseModel], node: dict[str, Any]) -> None:
    """Put into `node` (a config of `schema`, in place) the keys it lacks that are declared Added."""
    for name, field in schema.model_fields.items():
        added = _marker(field.metadata, Added)
        if name not in node:
            if added is not None:
                node[name] = copy.deepcopy(added.older)
            continue
        value = node[name]
        if isinstance(value, dict):
            member = _member(_models(field.annotation), value)
            if member is not None:
                fill_added(member, value)


def upgrade(schema: type[BaseModel], config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an older config with the keys added since filled in (see Added)."""
    upgraded = copy.deepcopy(dict(config))
    fill_added(schema, upgraded)
    return upgraded
