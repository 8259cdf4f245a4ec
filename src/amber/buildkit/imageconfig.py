"""The OCI image config of a built Dockerfile stage, as the pipeline needs it (pure mapping).

Comes from dockerd's ``GET /images/{id}/json`` (``Config``) of the image BuildKit built for the final stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Healthcheck:
    test: list[str]
    interval_ns: int | None = None
    timeout_ns: int | None = None
    start_period_ns: int | None = None
    retries: int | None = None


@dataclass(frozen=True)
class BuiltImageConfig:
    """User, env, workdir, entrypoint/cmd, ports, volumes, labels and healthcheck of the final stage."""

    user: str | None = None
    env: list[str] = field(default_factory=list)
    working_dir: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    exposed_ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    healthcheck: Healthcheck | None = None
    stop_signal: str | None = None

    @property
    def env_map(self) -> dict[str, str]:
        pairs = (item.partition("=") for item in self.env)
        return {key: value for key, _, value in pairs}

    def oci_metadata(self) -> dict[str, Any]:
        """TemplateOciImageMetadata JSON (without ``mapped_readiness``, which the pipeline decides)."""
        metadata: dict[str, Any] = {
            "labels": dict(self.labels),
            "exposed_ports": list(self.exposed_ports),
            "volumes": list(self.volumes),
        }
        if self.healthcheck is not None:
            health: dict[str, Any] = {"test": list(self.healthcheck.test)}
            for key in ("interval_ns", "timeout_ns", "start_period_ns", "retries"):
                value = getattr(self.healthcheck, key)
                if value is not None:
                    health[key] = value
            metadata["healthcheck"] = health
        return metadata


def _strings(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in value]


def image_config_from_engine(config: Mapping[str, Any] | None) -> BuiltImageConfig:
    """Map the Engine API's ``Config`` object (Docker's container-config casing) to ``BuiltImageConfig``."""
    config = config or {}
    health = config.get("Healthcheck") or None
    healthcheck = None
    if health and health.get("Test") and health["Test"] != ["NONE"]:
        healthcheck = Healthcheck(
            test=[str(t) for t in health["Test"]],
            interval_ns=health.get("Interval") or None,
            timeout_ns=health.get("Timeout") or None,
            start_period_ns=health.get("StartPeriod") or None,
            retries=health.get("Retries") or None,
        )
    return BuiltImageConfig(
        user=config.get("User") or None,
        env=[str(e) for e in config.get("Env") or []],
        working_dir=config.get("WorkingDir") or None,
        entrypoint=_strings(config.get("Entrypoint")),
        cmd=_strings(config.get("Cmd")),
        exposed_ports=sorted(config.get("ExposedPorts") or {}),
        volumes=sorted(config.get("Volumes") or {}),
        labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
        healthcheck=healthcheck,
        stop_signal=config.get("StopSignal") or None,
    )
