"""Runtime defaults of a template: who runs the start command, where, with which env, and when it is ready.

Pure, and the one rule for them: ``runtime_defaults`` serves the executed build and the plan alike. Precedence
for user and workdir: ``runtime_config`` > the last ``user``/``workdir`` step (a relative ``workdir`` resolves
against the one before it, Docker's rule) > the image config > root and ``/``. Env: the image config's ``Env``
overlaid by ``runtime_config.default_envs``; ``build_envs`` never reach the start command (R53, R56). The API
exposes env *keys* only (R55). Readiness: ``runtime_config.readiness``; else, with a ``start_cmd``, the image's
HEALTHCHECK mapped by ``map_healthcheck`` (R38); else an inherited start command's own probe.

A template base is the image: its runtime defaults (user, workdir, env) are the child's image config, and, as
a Docker image's CMD and HEALTHCHECK, its start command and readiness probe are inherited while the child sets
no ``start_cmd`` (a child ``runtime_config.readiness`` still replaces the probe); a child ``start_cmd``
replaces both.

A plan may know the image only in part (an OCI image is resolved only when the build runs; a Dockerfile's final
stage shows some of its config): ``ImageDefaults(complete=False)``, where an unset field is *unknown*, so the
rule leaves what depends on it unknown (None) instead of guessing root or ``/``.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from amber.builds.planning.steps import StepPlan, UserOp, WorkdirOp, resolve_workdir
from amber.contract.request import CreateTemplateRequest
from amber.contract.runtime import (
    DEFAULT_READINESS_INTERVAL_MS,
    DEFAULT_READINESS_STARTUP_GRACE_SECS,
    DEFAULT_READINESS_TIMEOUT_SECS,
    CommandReadiness,
    HttpReadiness,
    TcpReadiness,
    TimeoutReadiness,
)
from amber.oci.config import ImageConfig

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageDefaults:
    """The parts of an OCI image config the runtime uses (all optional)."""

    user: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    healthcheck: Mapping[str, Any] | None = None  # OCI Healthcheck: Test, Interval, Timeout, StartPeriod, Retries
    start_cmd: str | None = None  # a parent template's start command (template bases only)
    readiness: Readiness | None = None  # a parent template's readiness probe (template bases only)
    complete: bool = True  # False: known only in part (planning); an unset field is then unknown, not absent


@dataclass(frozen=True)
class Readiness:
    """A normalised readiness probe: every timing field filled with the contract defaults (30 s, 500 ms, 2 s)."""

    kind: str
    port: int | None = None
    path: str | None = None
    command: str | None = None
    timeout_ms: int | None = None
    timeout_secs: int = DEFAULT_READINESS_TIMEOUT_SECS
    interval_ms: int = DEFAULT_READINESS_INTERVAL_MS
    startup_grace_secs: int = DEFAULT_READINESS_STARTUP_GRACE_SECS

    def to_json(self) -> dict[str, Any]:
        """The contract's readiness object (TemplateReadinessProbe*)."""
        if self.kind == "timeout":
            return {"kind": "timeout", "timeout_ms": self.timeout_ms or 0}
        out: dict[str, Any] = {"kind": self.kind}
        if self.port is not None:
            out["port"] = self.port
        if self.path is not None:
            out["path"] = self.path
        if self.command is not None:
            out["command"] = self.command
        out |= {
            "timeout_secs": self.timeout_secs,
            "interval_ms": self.interval_ms,
            "startup_grace_secs": self.startup_grace_secs,
        }
        return out


def image_defaults(config: ImageConfig) -> ImageDefaults:
    """The runtime-relevant parts of an image's config (an OCI import's or a BuildKit build's alike)."""
    hc = config.healthcheck
    healthcheck: dict[str, Any] | None = None
    if hc is not None:
        healthcheck = {"Test": list(hc.test), "Interval": hc.interval_ns, "Timeout": hc.timeout_ns,
                       "StartPeriod": hc.start_period_ns, "Retries": hc.retries}  # fmt: skip
    return ImageDefaults(
        user=config.user or None,
        env=tuple(config.env_map.items()),
        workdir=config.working_dir or None,
        healthcheck=healthcheck,
    )


def readiness_from_json(value: Any) -> Readiness | None:
    """A stored ``Readiness.to_json()`` back (None when absent or not understood)."""
    if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str):
        return None
    names = {f.name for f in fields(Readiness)}
    return Readiness(**{k: v for k, v in value.items() if k in names})


def inherited_defaults(parent: RuntimeDefaults) -> ImageDefaults:
    """A parent template's runtime defaults as the image defaults of a child build (module docstring)."""
    return ImageDefaults(
        user=parent.user,
        env=tuple(parent.env.items()),
        workdir=parent.workdir,
        start_cmd=parent.start_cmd,
        readiness=parent.readiness,
    )


def normalise_readiness(probe: TcpReadiness | TimeoutReadiness | HttpReadiness | CommandReadiness) -> Readiness:
    if isinstance(probe, TimeoutReadiness):
        return Readiness(kind="timeout", timeout_ms=probe.timeout_ms)
    timeout = probe.timeout_secs if probe.timeout_secs is not None else DEFAULT_READINESS_TIMEOUT_SECS
    interval = probe.interval_ms if probe.interval_ms is not None else DEFAULT_READINESS_INTERVAL_MS
    grace = probe.startup_grace_secs if probe.startup_grace_secs is not None else DEFAULT_READINESS_STARTUP_GRACE_SECS
    port = probe.port if isinstance(probe, TcpReadiness | HttpReadiness) else None
    return Readiness(
        kind=probe.kind,
        port=port,
        path=probe.path if isinstance(probe, HttpReadiness) else None,
        command=probe.command if isinstance(probe, CommandReadiness) else None,
        timeout_secs=timeout,
        interval_ms=interval,
        startup_grace_secs=grace,
    )


def map_healthcheck(healthcheck: Mapping[str, Any] | None) -> Readiness | None:
    """An image HEALTHCHECK as a readiness probe (R38 ``mapped_readiness``); None for none/``NONE``.

    ``CMD-SHELL c`` → command ``c``; ``CMD a b`` → command ``a b`` shell-quoted. Interval and timeout come from
    the image (nanoseconds); the overall deadline covers start period + retries x (interval + timeout), at least
    the contract default of 30 s. No grace: Docker's start period only forgives failures, it does not delay.
    """
    if not healthcheck:
        return None
    test = healthcheck.get("Test") or healthcheck.get("test") or []
    if not isinstance(test, Sequence) or isinstance(test, str) or not test:
        return None
    head, args = str(test[0]), [str(a) for a in test[1:]]
    if head == "CMD-SHELL" and args:
        command = args[0]
    elif head == "CMD" and args:
        command = shlex.join(args)
    else:
        return None

    def seconds(key: str, default: float) -> float:
        value = healthcheck.get(key) or healthcheck.get(key.lower())
        return value / 1e9 if isinstance(value, int) and value > 0 else default

    interval = seconds("Interval", 0.5)
    timeout = seconds("Timeout", 30.0)
    start_period = seconds("StartPeriod", 0.0)
    retries_value = healthcheck.get("Retries") or healthcheck.get("retries")
    retries = retries_value if isinstance(retries_value, int) and retries_value > 0 else 3
    deadline = max(DEFAULT_READINESS_TIMEOUT_SECS, math.ceil(start_period + retries * (interval + timeout)))
    return Readiness(
        kind="command",
        command=command,
        timeout_secs=deadline,
        interval_ms=max(1, round(interval * 1000)),
        startup_grace_secs=0,
    )


@dataclass(frozen=True)
class RuntimeSettings:
    """What a request itself says about the runtime (``start_cmd`` and ``runtime_config``, normalised)."""

    user: str | None = None
    workdir: str | None = None
    envs: tuple[tuple[str, str], ...] = ()
    start_cmd: str | None = None
    readiness: Readiness | None = None

    @classmethod
    def of(cls, req: CreateTemplateRequest) -> RuntimeSettings:
        rc = req.runtime_config
        if rc is None:
            return cls(start_cmd=req.start_cmd or None)
        return cls(
            user=rc.default_user or None,
            workdir=rc.default_workdir or None,
            envs=tuple((rc.default_envs or {}).items()),
            start_cmd=req.start_cmd or None,
            readiness=normalise_readiness(rc.readiness) if rc.readiness is not None else None,
        )


@dataclass(frozen=True)
class RuntimeDefaults:
    user: str | None  # None only when planned over an image not known yet
    workdir: str | None  # likewise
    env: dict[str, str] = field(repr=False)  # values stay server-side
    start_cmd: str | None
    readiness: Readiness | None
    readiness_from_healthcheck: bool = False

    def to_json(self) -> dict[str, Any]:
        """TemplateRuntimeDefaults: env keys only, never values (R55)."""
        out: dict[str, Any] = {"default_env_keys": sorted(self.env)}
        if self.user is not None:
            out["default_user"] = self.user
        if self.workdir is not None:
            out["default_workdir"] = self.workdir
        if self.start_cmd:
            out["start_cmd"] = self.start_cmd
        if self.readiness is not None:
            out["readiness"] = self.readiness.to_json()
        return out


def runtime_from_json(value: Mapping[str, Any], env: Mapping[str, Any] | None = None) -> RuntimeDefaults:
    """``RuntimeDefaults.to_json()`` back, with the env values kept server-side (``env``; the JSON has keys only,
    so without them the env is empty)."""
    readiness = readiness_from_json(value.get("readiness"))
    return RuntimeDefaults(
        user=value.get("default_user"),
        workdir=value.get("default_workdir"),
        env={str(k): str(v) for k, v in (env or {}).items()},
        start_cmd=value.get("start_cmd") or None,
        readiness=readiness,
        readiness_from_healthcheck=bool(value.get("readiness_from_healthcheck")) and readiness is not None,
    )


def step_state(plans: Sequence[StepPlan], image: ImageDefaults) -> tuple[str | None, str | None]:
    """(user, workdir) in force after the steps, starting from the image config (None: not known yet)."""
    user = image.user or ("root" if image.complete else None)
    workdir = image.workdir or ("/" if image.complete else None)
    for plan in plans:
        for op in plan.ops:
            if isinstance(op, UserOp):
                user = op.user
            elif isinstance(op, WorkdirOp):
                absolute = op.path.startswith("/")
                workdir = resolve_workdir(workdir or "/", op.path) if absolute or workdir is not None else None
    return user, workdir


def image_env(image: ImageDefaults) -> dict[str, str]:
    env = dict(image.env)
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def runtime_defaults(runtime: RuntimeSettings, plans: Sequence[StepPlan], image: ImageDefaults) -> RuntimeDefaults:
    """The one rule (module docstring): what the request says, the steps, then the image."""
    user, workdir = step_state(plans, image)
    env = image_env(image) | dict(runtime.envs)
    start_cmd = runtime.start_cmd or image.start_cmd or None
    readiness: Readiness | None = None
    mapped = False
    if runtime.readiness is not None:
        readiness = runtime.readiness
    elif runtime.start_cmd:
        readiness = map_healthcheck(image.healthcheck)
        mapped = readiness is not None
    elif start_cmd:  # the parent template's start command, with its probe
        readiness = image.readiness
    return RuntimeDefaults(
        user=runtime.user or user,
        workdir=runtime.workdir or workdir,
        env=env,
        start_cmd=start_cmd,
        readiness=readiness,
        readiness_from_healthcheck=mapped,
    )
