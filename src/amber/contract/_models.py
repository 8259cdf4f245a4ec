"""The two kinds of contract model: closed (unknown keys dropped, as the SDK's generated model drops them) and
open (unknown keys kept and re-emitted). Both are strict (``"2"`` is not an integer) and frozen.

Unknown keys of a request are never stored: ``declared_json`` is the JSON of a model's declared fields only.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ClosedModel(BaseModel):
    """A closed contract model: unknown keys are dropped, as the SDK's generated model drops them."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class OpenModel(BaseModel):
    """An open contract model: unknown keys are kept (and re-emitted)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


def declared_json(model: BaseModel) -> dict[str, Any]:
    """``model`` as JSON (``mode="json"``, ``None`` omitted) with the unknown keys of every open model in it
    dropped, at any depth: what the contract defines and nothing a client added."""
    return _declared(model, model.model_dump(mode="json", exclude_none=True))


def _declared(model: BaseModel, data: dict[str, Any]) -> dict[str, Any]:
    return {name: _declared_value(getattr(model, name), data[name]) for name in type(model).model_fields
            if name in data}


def _declared_value(value: Any, data: Any) -> Any:
    if isinstance(value, BaseModel):
        return _declared(value, data)
    if isinstance(value, list | tuple):
        return [_declared_value(v, d) for v, d in zip(value, data, strict=True)]
    if isinstance(value, dict):
        return {key: _declared_value(value[key], item) for key, item in data.items()}
    return data
