"""How a template runs once built (templates-models.md § 3.6): ``runtime_config`` and the readiness probes, their
contract defaults, and the keys of TemplateRuntimeDefaults a caller may see (R55: env *keys*, never values)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from amber.contract._models import OpenModel

DEFAULT_READINESS_TIMEOUT_SECS = 30
DEFAULT_READINESS_INTERVAL_MS = 500
DEFAULT_READINESS_STARTUP_GRACE_SECS = 2


class TcpReadiness(OpenModel):
    kind: Literal["tcp"]
    port: int
    timeout_secs: int | None = None
    interval_ms: int | None = None
    startup_grace_secs: int | None = None


class TimeoutReadiness(OpenModel):
    kind: Literal["timeout"]
    timeout_ms: int


class HttpReadiness(OpenModel):
    kind: Literal["http"]
    port: int
    path: str
    timeout_secs: int | None = None
    interval_ms: int | None = None
    startup_grace_secs: int | None = None


class CommandReadiness(OpenModel):
    kind: Literal["command"]
    command: str
    timeout_secs: int | None = None
    interval_ms: int | None = None
    startup_grace_secs: int | None = None


ReadinessProbe = Annotated[
    TcpReadiness | TimeoutReadiness | HttpReadiness | CommandReadiness, Field(discriminator="kind")
]


class RuntimeConfig(OpenModel):
    default_user: str | None = None
    default_workdir: str | None = None
    default_envs: dict[str, str] | None = Field(default=None, repr=False)  # values never leave the server
    readiness: ReadinessProbe | None = None


RUNTIME_DEFAULT_KEYS = ("default_env_keys", "start_cmd", "default_user", "default_workdir", "readiness")


def safe_runtime_defaults(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Only the documented keys (R55: env *keys*, never values); None when nothing is set."""
    if not value:
        return None
    return {k: value[k] for k in RUNTIME_DEFAULT_KEYS if value.get(k) is not None}
