"""The one image config type every producer and consumer of images shares (R35, R38). Pure.

``ImageConfig.from_json`` reads an OCI / Docker image config blob (what a registry serves);
``ImageConfig.from_engine`` reads the same fields from a Docker engine's image inspect (what BuildKit built).
``oci_metadata`` is the contract's TemplateOciImageMetadata. A malformed field raises :class:`ImageConfigError`
naming it. User resolution against an image's files is ``amber.rootfs.users``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from amber.oci.errors import ImageConfigError
from amber.oci.platform import Platform


@dataclass(frozen=True)
class Healthcheck:
    """The image's ``Healthcheck`` (Docker durations in nanoseconds)."""

    test: tuple[str, ...]
    interval_ns: int | None = None
    timeout_ns: int | None = None
    start_period_ns: int | None = None
    retries: int | None = None

    def to_metadata(self) -> dict[str, Any]:
        """The contract's TemplateOciHealthcheckMetadata, without ``mapped_readiness``: which probe a healthcheck
        becomes is the build's decision (``amber.builds.planning.runtime.map_healthcheck``)."""
        out: dict[str, Any] = {"test": list(self.test)}
        for key in ("interval_ns", "timeout_ns", "start_period_ns", "retries"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class ImageConfig:
    """What Amber keeps of an image config. Empty values mean "not set by the image"."""

    platform: Platform
    user: str = ""
    env: tuple[str, ...] = ()
    working_dir: str = ""
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    healthcheck: Healthcheck | None = None
    stop_signal: str | None = None
    diff_ids: tuple[str, ...] = ()

    @property
    def env_map(self) -> dict[str, str]:
        """``Env`` as a mapping (later entries win; an entry without ``=`` maps to "")."""
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out

    def oci_metadata(self) -> dict[str, Any]:
        """The contract's TemplateOciImageMetadata (labels, exposed_ports, volumes, healthcheck; R38)."""
        out: dict[str, Any] = {}
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.exposed_ports:
            out["exposed_ports"] = list(self.exposed_ports)
        if self.volumes:
            out["volumes"] = list(self.volumes)
        if self.healthcheck is not None:
            out["healthcheck"] = self.healthcheck.to_metadata()
        return out

    @classmethod
    def from_json(cls, body: bytes | str) -> ImageConfig:
        """Parse an image config blob (OCI or Docker); :class:`ImageConfigError` names the malformed field."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImageConfigError(f"image config is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ImageConfigError("image config is not a JSON object")
        rootfs = doc.get("rootfs") or {}
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        return cls._of(doc.get("config"), Platform.from_json(doc), diff_ids)

    @classmethod
    def from_engine(cls, inspect: Mapping[str, Any]) -> ImageConfig:
        """The config of an image in a Docker engine, from ``GET /images/{id}/json``: the same fields under
        Docker's casing (``Config``, ``Os``, ``Architecture``, ``Variant``, ``RootFS.Layers``), read by the same
        rules as :meth:`from_json`."""
        rootfs = inspect.get("RootFS") or {}
        platform = Platform.from_json({"os": inspect.get("Os"), "architecture": inspect.get("Architecture"),
                                       "variant": inspect.get("Variant")})
        return cls._of(inspect.get("Config"), platform, rootfs.get("Layers") if isinstance(rootfs, dict) else None)

    @classmethod
    def _of(cls, cfg: Any, platform: Platform, diff_ids: Any) -> ImageConfig:
        cfg = cfg or {}
        if not isinstance(cfg, dict):
            raise ImageConfigError("image config field 'config' is not an object")
        return cls(
            platform=platform,
            user=_str(cfg, "User"),
            env=_str_list(cfg, "Env") or (),
            working_dir=_str(cfg, "WorkingDir"),
            entrypoint=_str_list(cfg, "Entrypoint"),
            cmd=_str_list(cfg, "Cmd"),
            exposed_ports=_keys(cfg, "ExposedPorts"),
            volumes=_keys(cfg, "Volumes"),
            labels=_labels(cfg),
            healthcheck=_healthcheck(cfg),
            stop_signal=_str(cfg, "StopSignal") or None,
            diff_ids=tuple(str(d) for d in diff_ids) if isinstance(diff_ids, list) else (),
        )


def _str(cfg: Mapping[str, Any], key: str) -> str:
    value = cfg.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageConfigError(f"image config field config.{key} must be a string, got {type(value).__name__}")
    return value


def _str_list(cfg: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, str):  # some builders write a bare string; Docker treats it as one word list
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageConfigError(f"image config field config.{key} must be a list of strings")
    return tuple(value)


def _keys(cfg: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = cfg.get(key)
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ImageConfigError(f"image config field config.{key} must be an object")
    return tuple(sorted(str(k) for k in value))


def _labels(cfg: Mapping[str, Any]) -> dict[str, str]:
    value = cfg.get("Labels")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ImageConfigError("image config field config.Labels must be an object")
    return {str(k): str(v) for k, v in value.items()}


def _optional_int(hc: Mapping[str, Any], key: str) -> int | None:
    value = hc.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ImageConfigError(f"image config field config.Healthcheck.{key} must be an integer")
    return value


def _healthcheck(cfg: Mapping[str, Any]) -> Healthcheck | None:
    hc = cfg.get("Healthcheck")
    if hc is None:
        return None
    if not isinstance(hc, dict):
        raise ImageConfigError("image config field config.Healthcheck must be an object")
    test = _str_list(hc, "Test") or ()
    return Healthcheck(
        test=test,
        interval_ns=_optional_int(hc, "Interval"),
        timeout_ns=_optional_int(hc, "Timeout"),
        start_period_ns=_optional_int(hc, "StartPeriod"),
        retries=_optional_int(hc, "Retries"),
    )
