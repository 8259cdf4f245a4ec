"""The 15 declarative steps of a request (templates-models.md § 3.2): closed models discriminated by ``action``,
and the ``mode`` value they share. Pure models; the rules on their content are in ``validation.py``."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator

from amber.contract._models import ClosedModel


def _mode_value(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError('must be an octal string such as "0755" or an integer mode')
    if isinstance(value, int):
        if not 0 <= value <= 0o7777:
            raise ValueError("must be between 0 and 0o7777")
        return value
    if not re.fullmatch(r"[0-7]{1,4}", value.strip()):
        raise ValueError(f'{value!r} is not an octal mode such as "0755"')
    return value


# PlainValidator keeps pydantic's union member names out of error locations.
OctalMode = Annotated[int | str, PlainValidator(_mode_value)]


def mode_bits(mode: int | str) -> int:
    """The permission bits of a validated ``mode`` (``"0755"`` → 0o755, 493 → 0o755)."""
    return mode if isinstance(mode, int) else int(mode.strip(), 8)


def mode_string(mode: int | str) -> str:
    """The SDK's canonical 4-digit octal form of a mode (``template.py`` ``_normalize_mode_value``)."""
    return format(mode_bits(mode) & 0o7777, "04o")


class AptInstallStep(ClosedModel):
    action: Literal["apt_install"]
    packages: list[str]


class PipInstallStep(ClosedModel):
    action: Literal["pip_install"]
    packages: list[str]
    g: bool | None = None  # system-wide by default; false = per-user install


class NpmInstallStep(ClosedModel):
    action: Literal["npm_install"]
    packages: list[str]
    g: bool | None = None  # true = global install


class BunInstallStep(ClosedModel):
    action: Literal["bun_install"]
    packages: list[str]
    g: bool | None = None  # true = global install


class RunStep(ClosedModel):
    action: Literal["run"]
    command: str
    user: str | None = None


class WorkdirStep(ClosedModel):
    action: Literal["workdir"]
    path: str


class UserStep(ClosedModel):
    action: Literal["user"]
    user: str


class CopyItem(ClosedModel):
    """TemplateCopyItem: one source list → destination copy inside a ``copy_items`` step."""

    sources: list[str]
    dst: str
    user: str | None = None
    mode: OctalMode | None = None
    force_upload: bool | None = None


class CopyStep(ClosedModel):
    action: Literal["copy"]
    sources: list[str]
    dst: str
    user: str | None = None
    mode: OctalMode | None = None
    force_upload: bool | None = None


class CopyItemsStep(ClosedModel):
    action: Literal["copy_items"]
    items: list[CopyItem]


class RemoveStep(ClosedModel):
    action: Literal["remove"]
    path: str
    recursive: bool | None = None
    force: bool | None = None


class RenameStep(ClosedModel):
    action: Literal["rename"]
    src: str
    dst: str
    force: bool | None = None


class MakeDirStep(ClosedModel):
    action: Literal["make_dir"]
    path: str
    mode: OctalMode | None = None


class MakeSymlinkStep(ClosedModel):
    action: Literal["make_symlink"]
    target: str
    path: str


class GitCloneStep(ClosedModel):
    action: Literal["git_clone"]
    url: str
    path: str | None = None  # the SDK always sends it; default /workspace
    branch: str | None = None
    depth: int | None = None


class SkipCacheStep(ClosedModel):
    """A cache boundary: this step and every later one rebuild (R46)."""

    action: Literal["skip_cache"]


Step = Annotated[
    AptInstallStep
    | PipInstallStep
    | NpmInstallStep
    | BunInstallStep
    | RunStep
    | WorkdirStep
    | UserStep
    | CopyStep
    | CopyItemsStep
    | RemoveStep
    | RenameStep
    | MakeDirStep
    | MakeSymlinkStep
    | GitCloneStep
    | SkipCacheStep,
    Field(discriminator="action"),
]

STEP_ACTIONS: tuple[str, ...] = (
    "apt_install",
    "pip_install",
    "npm_install",
    "bun_install",
    "run",
    "workdir",
    "user",
    "copy",
    "copy_items",
    "remove",
    "rename",
    "make_dir",
    "make_symlink",
    "git_clone",
    "skip_cache",
)

