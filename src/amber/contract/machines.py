"""Machines (machines-api.md §5): the request models of the machine, exec, process and timeout endpoints, the
closed sets (status, timeout action, warm-pool mode) and the pure rules that need no database.

Every model is strict and open (the SDK's generated models keep unknown keys, and so do we, but nothing here
stores them). ``envs`` values are ``repr``-hidden: they must never reach a log line, an error or a record.
Rules raise ``InvalidRequest`` naming the field; the API answers 400 ``invalid_request``.
"""

from __future__ import annotations

import posixpath
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError

from amber.contract._models import OpenModel
from amber.contract.errors import InvalidRequest

DEFAULT_TEMPLATE = "base"
DEFAULT_TIMEOUT_MS = 300_000
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000  # a week; longer lives are what hibernation is for
DEFAULT_EXEC_TIMEOUT_SECS = 30
MAX_EXEC_TIMEOUT_SECS = 24 * 3600
RESERVED_PREFIX = "/workspace/.nullspace"  # runtime files of the platform; never a cwd (contract)
MAX_ENV_VARS = 512
MAX_ENV_BYTES = 256 * 1024  # names + values together, per request


M = TypeVar("M", bound=OpenModel)


class MachineStatus(StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    DESTROYED = "destroyed"
    ERROR = "error"


class TimeoutAction(StrEnum):
    DESTROY = "destroy"
    HIBERNATE = "hibernate"


class OnTimeout(StrEnum):
    DESTROY = "destroy"
    PAUSE = "pause"


class WarmPoolMode(StrEnum):
    BYPASS = "bypass"
    PREFER = "prefer"
    REQUIRE = "require"


class EndReason(StrEnum):
    """Why a machine stopped running for good (the tombstone's ``end_reason``)."""

    KILLED = "killed"  # DELETE by its owner
    TIMEOUT = "timeout"  # timeout_ms or inactivity with action destroy
    AUTO_DELETE = "auto_delete"  # auto_delete_after_ms after hibernation
    LOST = "lost"  # the server died while it ran
    FAILED = "failed"  # could not be started or resumed


class WarmPoolCheckoutRequest(OpenModel):
    id: str | None = None
    mode: Literal["bypass", "prefer", "require"] | None = None
    wait_ms: int | None = None


class LifecycleConfig(OpenModel):
    on_timeout: Literal["destroy", "pause"] | None = None


class EgressConfig(OpenModel):
    mode: Literal["allow_all", "deny_all", "custom"] | None = None
    allow_cidrs: list[str] | None = None
    deny_cidrs: list[str] | None = None


class NetworkCreateConfig(OpenModel):
    allow_public_traffic: bool | None = None
    mask_request_host: bool | None = None
    egress: EgressConfig | None = None
    deny_out: list[str] | None = None
    allow_out: list[str] | None = None


class CreateMachineRequest(OpenModel):
    template: str | None = None
    snapshot_id: str | None = None
    warm_pool: WarmPoolCheckoutRequest | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    timeout_ms: int | None = None
    timeout_action: Literal["destroy", "hibernate"] | None = None
    inactivity_timeout_ms: int | None = None
    auto_delete_after_ms: int | None = None
    ephemeral: bool = False
    auto_resume: bool = False
    envs: dict[str, str] | None = Field(default=None, repr=False)
    metadata: dict[str, Any] | None = None
    internet_access: bool | None = None
    cwd: str | None = None
    desktop: dict[str, Any] | None = None
    network: NetworkCreateConfig | None = None
    volumes: list[dict[str, Any]] | None = None
    lifecycle: LifecycleConfig | None = None


class ExecRequest(OpenModel):
    command: str
    args: list[str] | None = None
    timeout_secs: int | None = None
    cwd: str | None = None
    envs: dict[str, str] | None = Field(default=None, repr=False)
    shell: bool | None = None
    background: bool | None = None
    user: str | None = None


class SetTimeoutRequest(OpenModel):
    timeout_ms: int
    timeout_action: Literal["destroy", "hibernate"] | None = None


class SendStdinRequest(OpenModel):
    data: str


class PreviewReadinessRequest(OpenModel):
    """``POST /v1/machines/{id}/ports/{port}/readiness``: wait up to ``timeout_secs`` for the port to accept a TCP
    connection (``tcp``) or answer ``path`` with a status below 400 (``http``), trying every ``interval_ms``."""

    kind: Literal["tcp", "http"] = "tcp"
    path: str = Field(default="/", pattern=r"^/[^\s]*$", max_length=2048)
    timeout_secs: int = Field(default=30, ge=0, le=300)
    interval_ms: int = Field(default=500, ge=50, le=60_000)


def parse_model(model: type[M], data: Any, what: str) -> M:
    """``data`` (decoded JSON) as ``model``, or ``InvalidRequest`` naming the first bad field."""
    if not isinstance(data, dict):
        raise InvalidRequest("", f"{what} must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = "is required"
        raise InvalidRequest(field, message) from None


# ---------------------------------------------------------------------------------------------------------------
# Rules


def check_envs(envs: dict[str, str] | None, field: str = "envs") -> dict[str, str]:
    """Names are shell-safe identifiers; values carry no NUL; bounded in count and size. Messages name the
    variable, never its value."""
    if not envs:
        return {}
    if len(envs) > MAX_ENV_VARS:
        raise InvalidRequest(field, f"at most {MAX_ENV_VARS} variables")
    total = 0
    for name, value in envs.items():
        if not name or not (name[0].isalpha() or name[0] == "_") or not all(c.isalnum() or c == "_" for c in name) \
                or not name.isascii():
            raise InvalidRequest(f"{field}.{name}", "names are letters, digits and '_', not starting with a digit")
        if "\0" in value:
            raise InvalidRequest(f"{field}.{name}", "the value contains a NUL character")
        total += len(name) + len(value.encode())
    if total > MAX_ENV_BYTES:
        raise InvalidRequest(field, f"names and values exceed {MAX_ENV_BYTES} bytes")
    return dict(envs)


def normalize_cwd(cwd: str | None, field: str = "cwd") -> str | None:
    """An absolute guest path, normalised (``/a/./b/../c`` → ``/a/c``); never under the reserved runtime
    prefix. None (or empty) stays None."""
    if cwd is None or cwd == "":
        return None
    if "\0" in cwd:
        raise InvalidRequest(field, "contains a NUL character")
    if not cwd.startswith("/"):
        raise InvalidRequest(field, f"must be an absolute path, got {cwd!r}")
    normal = posixpath.normpath(cwd)
    normal = "/" + normal.lstrip("/")  # normpath keeps a leading '//'
    if is_reserved(normal):
        raise InvalidRequest(field, f"{RESERVED_PREFIX} is reserved for the platform's runtime files")
    return normal


def is_reserved(path: str) -> bool:
    return path == RESERVED_PREFIX or path.startswith(RESERVED_PREFIX + "/")


def check_create(req: CreateMachineRequest) -> None:
    """The create rules that need no template or host facts."""
    if req.snapshot_id is not None and req.disk_mb is not None:
        raise InvalidRequest("disk_mb", "is not permitted with snapshot_id (the snapshot fixes the disk)")
    for name in ("vcpus", "memory_mb", "disk_mb"):
        value = getattr(req, name)
        if value is not None and value <= 0:
            raise InvalidRequest(name, "must be a positive integer")
    if req.timeout_ms is not None and not 0 < req.timeout_ms <= MAX_TIMEOUT_MS:
        raise InvalidRequest("timeout_ms", f"must be between 1 and {MAX_TIMEOUT_MS} ms")
    for name in ("inactivity_timeout_ms", "auto_delete_after_ms"):
        value = getattr(req, name)
        if value is not None and not 0 < value <= MAX_TIMEOUT_MS:
            raise InvalidRequest(name, f"must be between 1 and {MAX_TIMEOUT_MS} ms")
    if req.ephemeral and req.auto_resume:
        raise InvalidRequest("auto_resume", "cannot be combined with ephemeral")
    if req.auto_resume and timeout_action_of(req) != TimeoutAction.HIBERNATE:
        raise InvalidRequest("auto_resume", "requires timeout_action 'hibernate' or lifecycle.on_timeout 'pause'")
    if req.ephemeral and (req.timeout_action == "hibernate" or (
            req.lifecycle is not None and req.lifecycle.on_timeout == "pause")):
        raise InvalidRequest("ephemeral", "an ephemeral machine is never hibernated: its timeout action is destroy")
    if req.warm_pool is not None and req.warm_pool.wait_ms is not None and not 0 <= req.warm_pool.wait_ms <= 30_000:
        raise InvalidRequest("warm_pool.wait_ms", "must be between 0 and 30000")
    check_envs(req.envs)
    normalize_cwd(req.cwd)
    if req.metadata is not None and not isinstance(req.metadata, dict):
        raise InvalidRequest("metadata", "must be a JSON object")


def timeout_action_of(req: CreateMachineRequest) -> TimeoutAction:
    """``timeout_action`` wins; else ``lifecycle.on_timeout`` (``pause`` = hibernate); else destroy."""
    if req.ephemeral:
        return TimeoutAction.DESTROY
    if req.timeout_action is not None:
        return TimeoutAction(req.timeout_action)
    if req.lifecycle is not None and req.lifecycle.on_timeout == "pause":
        return TimeoutAction.HIBERNATE
    return TimeoutAction.DESTROY


def internet_of(req: CreateMachineRequest) -> bool:
    """``internet_access`` (default true); an egress policy of ``deny_all`` also turns it off."""
    if req.internet_access is False:
        return False
    egress = req.network.egress if req.network is not None else None
    return not (egress is not None and egress.mode == "deny_all")


def check_exec(req: ExecRequest) -> None:
    if not req.command:
        raise InvalidRequest("command", "must not be empty")
    if "\0" in req.command or any("\0" in a for a in req.args or ()):
        raise InvalidRequest("command", "contains a NUL character")
    if req.timeout_secs is not None and not 0 < req.timeout_secs <= MAX_EXEC_TIMEOUT_SECS:
        raise InvalidRequest("timeout_secs", f"must be between 1 and {MAX_EXEC_TIMEOUT_SECS}")
    check_envs(req.envs)
    normalize_cwd(req.cwd)


def exec_argv(req: ExecRequest) -> tuple[list[str] | None, str | None]:
    """(argv, shell): ``shell: true`` runs ``command`` through ``/bin/sh -c`` (the args, if any, become the
    shell's positional parameters); otherwise argv = ``[command, *args]``."""
    if req.shell:
        if req.args:
            return ["/bin/sh", "-c", req.command, "sh", *req.args], None
        return None, req.command
    return [req.command, *(req.args or [])], None


def command_line(req: ExecRequest) -> str:
    """How the process table shows the command (ProcessInfo.command)."""
    if req.shell:
        return req.command
    return " ".join([req.command, *(req.args or [])])
