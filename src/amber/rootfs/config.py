"""The image config Amber keeps (R35, R38) and ``User`` resolution against the image's own files. Pure.

``ImageConfig.from_json`` reads an OCI / Docker image config blob. ``resolve_user`` turns ``User`` (``user``,
``uid``, ``user:group``, ``user:gid``, ``uid:group``, ``uid:gid``; empty = root) into numeric ids using the
image's /etc/passwd and /etc/group text: names must exist there, numeric ids need not (a uid without a
passwd entry gets gid 0 and home ``/``, as Docker does).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amber.oci.errors import ImageConfigError
from amber.oci.platform import Platform
from amber.rootfs.paths import PathEscapeError, host_path, resolve_in_root

_MAX_ID = 2**32 - 2
# Contract defaults for readiness timing (templates-models §3.6).
_READINESS_DEFAULTS = {"timeout_secs": 30, "interval_ms": 500, "startup_grace_secs": 2}


@dataclass(frozen=True)
class Healthcheck:
    """The image's ``Healthcheck`` (Docker durations in nanoseconds)."""

    test: tuple[str, ...]
    interval_ns: int | None = None
    timeout_ns: int | None = None
    start_period_ns: int | None = None
    retries: int | None = None

    @property
    def command(self) -> str | None:
        """The shell command it runs, or None for ``NONE`` / an empty test (healthcheck disabled)."""
        if not self.test or self.test[0] == "NONE":
            return None
        if self.test[0] == "CMD-SHELL":
            return " ".join(self.test[1:]) or None
        if self.test[0] == "CMD":
            return shlex.join(self.test[1:]) or None
        return shlex.join(self.test) or None  # a bare list: Docker treats it as CMD

    def mapped_readiness(self) -> dict[str, Any] | None:
        """A contract readiness probe of kind ``command`` equivalent to this healthcheck, or None."""
        command = self.command
        if command is None:
            return None
        probe: dict[str, Any] = {"kind": "command", "command": command, **_READINESS_DEFAULTS}
        if self.interval_ns:
            probe["interval_ms"] = max(1, self.interval_ns // 1_000_000)
        if self.start_period_ns:
            probe["startup_grace_secs"] = max(0, self.start_period_ns // 1_000_000_000)
        if self.timeout_ns and self.retries:
            probe["timeout_secs"] = max(1, (self.timeout_ns * max(self.retries, 1)) // 1_000_000_000)
        return probe

    def to_metadata(self) -> dict[str, Any]:
        """The contract's TemplateOciHealthcheckMetadata."""
        out: dict[str, Any] = {"test": list(self.test)}
        for key in ("interval_ns", "timeout_ns", "start_period_ns", "retries"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        mapped = self.mapped_readiness()
        if mapped is not None:
            out["mapped_readiness"] = mapped
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
        """Parse an image config blob; :class:`ImageConfigError` names the malformed field."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImageConfigError(f"image config is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ImageConfigError("image config is not a JSON object")
        cfg = doc.get("config") or {}
        if not isinstance(cfg, dict):
            raise ImageConfigError("image config field 'config' is not an object")
        rootfs = doc.get("rootfs") or {}
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        return cls(
            platform=Platform.from_json(doc),
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


# -- users --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserSpec:
    """A parsed ``User`` string: each part is a numeric id or a name; ``group`` None = the user's own."""

    user: int | str
    group: int | str | None = None


@dataclass(frozen=True)
class ResolvedUser:
    """Numeric identity to run processes as."""

    uid: int
    gid: int
    name: str | None = None
    home: str = "/"
    supplementary_gids: tuple[int, ...] = ()


def _id_or_name(text: str, what: str, spec: str) -> int | str:
    if not text:
        raise ImageConfigError(f"User {spec!r}: the {what} part is empty")
    if text.isdigit():
        value = int(text)
        if value > _MAX_ID:
            raise ImageConfigError(f"User {spec!r}: {what} id {value} is out of range")
        return value
    if any(c in text for c in ":\n\0") or text.startswith("-"):
        raise ImageConfigError(f"User {spec!r}: invalid {what} name {text!r}")
    return text


def parse_user_spec(text: str) -> UserSpec:
    """Parse the six accepted forms (R35); empty means root."""
    if text == "":
        return UserSpec(0)
    user, sep, group = text.partition(":")
    if sep and ":" in group:
        raise ImageConfigError(f"User {text!r}: expected user, uid, user:group, user:gid, uid:group or uid:gid")
    return UserSpec(_id_or_name(user, "user", text), _id_or_name(group, "group", text) if sep else None)


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


def _passwd_entries(passwd: str) -> list[_PasswdEntry]:
    entries = []
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        try:
            home = fields[5] if len(fields) > 5 else "/"
            entries.append(_PasswdEntry(fields[0], int(fields[2]), int(fields[3]), home))
        except ValueError:
            continue
    return entries


def _group_entries(group: str) -> list[tuple[str, int, list[str]]]:
    entries = []
    for line in group.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or line.startswith("#"):
            continue
        try:
            members = [m for m in fields[3].split(",") if m] if len(fields) > 3 else []
            entries.append((fields[0], int(fields[2]), members))
        except ValueError:
            continue
    return entries


def resolve_user(text: str, passwd: str, group: str) -> ResolvedUser:
    """Resolve ``User`` against the image's /etc/passwd and /etc/group contents."""
    spec = parse_user_spec(text)
    users = _passwd_entries(passwd)
    groups = _group_entries(group)
    entry: _PasswdEntry | None
    if isinstance(spec.user, int):
        entry = next((u for u in users if u.uid == spec.user), None)
        uid = spec.user
    else:
        entry = next((u for u in users if u.name == spec.user), None)
        if entry is None:
            raise ImageConfigError(f"User {text!r}: no user named {spec.user!r} in the image's /etc/passwd")
        uid = entry.uid
    gid = entry.gid if entry is not None else 0
    if isinstance(spec.group, int):
        gid = spec.group
    elif isinstance(spec.group, str):
        found = next((g for g in groups if g[0] == spec.group), None)
        if found is None:
            raise ImageConfigError(f"User {text!r}: no group named {spec.group!r} in the image's /etc/group")
        gid = found[1]
    name = entry.name if entry is not None else None
    supplementary = tuple(sorted({g[1] for g in groups if name is not None and name in g[2] and g[1] != gid}))
    return ResolvedUser(uid, gid, name, entry.home if entry is not None and entry.home else "/", supplementary)


def _read_in_tree(tree: Path, relative: str) -> str:
    """Read a file of the image, following its symlinks inside the tree only; "" when absent."""
    try:
        parts = resolve_in_root(str(tree), relative.split("/"), follow_last=True)
        with open(host_path(str(tree), parts), encoding="utf-8", errors="replace") as f:
            return f.read(16 * 1024 * 1024)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PathEscapeError):
        return ""


def resolve_user_in_tree(text: str, tree: Path) -> ResolvedUser:
    """:func:`resolve_user` with /etc/passwd and /etc/group read from an unpacked image tree."""
    return resolve_user(text, _read_in_tree(tree, "etc/passwd"), _read_in_tree(tree, "etc/group"))
