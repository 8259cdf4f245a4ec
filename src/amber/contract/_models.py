"""The two kinds of contract model: closed (unknown keys dropped, as the SDK's generated model drops them) and
open (unknown keys kept and re-emitted). Both are strict (``"2"`` is not an integer) and frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ClosedModel(BaseModel):
    """A closed contract model: unknown keys are dropped, as the SDK's generated model drops them."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class OpenModel(BaseModel):
    """An open contract model: unknown keys are kept (and re-emitted)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
