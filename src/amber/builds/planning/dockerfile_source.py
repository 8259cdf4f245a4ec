"""Reading an inline Dockerfile for the plan, with BuildKit's own parser (the ``dockerfile`` package). Pure.

``summarise_dockerfile`` lists what the plan shows (RUN steps, build steps, ENV, ignored instructions);
``final_stage_image`` is what the built image's config will say about the runtime, as far as the Dockerfile
alone tells (USER, WORKDIR, HEALTHCHECK of the target stage and of the stages it builds on; what an external
base image sets, or a value with a ``$`` variable, stays unknown).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Any

import dockerfile

from amber.builds.planning.runtime import ImageDefaults
from amber.builds.planning.steps import resolve_workdir

# Instructions the template pipeline does not act on (a warning names each with its line).
IGNORED_INSTRUCTIONS = ("MAINTAINER", "ONBUILD", "STOPSIGNAL")


class DockerfileError(ValueError):
    """The Dockerfile does not parse or has no FROM."""


@dataclass
class DockerfileSummary:
    base: str
    run_steps: list[str] = field(default_factory=list)
    build_steps: list[dict[str, Any]] = field(default_factory=list)
    env_assignments: list[list[str]] = field(default_factory=list)
    ignored: list[tuple[str, int]] = field(default_factory=list)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def summarise_dockerfile(text: str) -> DockerfileSummary:
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        raise DockerfileError(f"does not parse: {exc}") from None
    froms = [c for c in commands if c.cmd == "FROM"]
    if not froms:
        raise DockerfileError("has no FROM instruction")
    summary = DockerfileSummary(base=froms[-1].value[0] if froms[-1].value else "scratch")
    for c in commands:
        name = c.cmd.upper()
        if name in IGNORED_INSTRUCTIONS:
            summary.ignored.append((c.original, c.start_line))
            continue
        payload: dict[str, Any]
        if name == "RUN":
            command = shlex.join(c.value) if c.json else " ".join(c.value)
            summary.run_steps.append(command)
            payload = {"command": command}
        elif name == "ENV":
            pairs = [[c.value[i], _unquote(c.value[i + 1])] for i in range(0, len(c.value) - 1, 2)]
            summary.env_assignments.extend(pairs)
            payload = {"assignments": pairs}
        elif name in ("COPY", "ADD"):
            payload = {"sources": list(c.value[:-1]), "dst": c.value[-1] if c.value else ""}
        elif name == "FROM":
            payload = {"image": c.value[0] if c.value else ""}
            if len(c.value) >= 3 and c.value[1].upper() == "AS":
                payload["stage"] = c.value[2]
        else:
            payload = {"value": list(c.value)}
        if c.flags:
            payload["flags"] = list(c.flags)
        payload["line"] = c.start_line
        summary.build_steps.append({name.capitalize(): payload})
    return summary


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_HEALTHCHECK_FLAGS = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
                      "start-interval": "StartInterval"}  # fmt: skip


def _duration_ns(text: str) -> int | None:
    """A Go duration (``1m30s``, ``500ms``, ``0``) in nanoseconds, as BuildKit parses HEALTHCHECK flags."""
    if text == "0":
        return 0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return round(sum(float(n) * _NS[u] for n, u in parts))


def _healthcheck(command: Any) -> dict[str, Any] | None:
    """The image config's Healthcheck a HEALTHCHECK instruction sets (None: not known from the text)."""
    words = [str(v) for v in command.value]
    if not words or "$" in command.original:
        return None
    if words[0].upper() == "NONE":
        return {"Test": ["NONE"]}
    if words[0].upper() != "CMD" or len(words) < 2:
        return None
    out: dict[str, Any] = {"Test": ["CMD", *words[1:]] if command.json else ["CMD-SHELL", " ".join(words[1:])]}
    for flag in command.flags:
        name, _, value = str(flag).removeprefix("--").partition("=")
        if name == "retries":
            if not value.isdigit():
                return None
            out["Retries"] = int(value)
        elif name in _HEALTHCHECK_FLAGS:
            ns = _duration_ns(value)
            if ns is None:
                return None
            out[_HEALTHCHECK_FLAGS[name]] = ns
    return out


def final_stage_image(text: str, build_target: str | None = None) -> ImageDefaults:
    """The runtime part of the built image's config as far as the Dockerfile tells (``complete=False``)."""
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError:
        return ImageDefaults(complete=False)
    by_name: dict[str, int] = {}
    stages: list[ImageDefaults] = []
    for c in commands:
        name = c.cmd.upper()
        if name == "FROM":
            parent = by_name.get(str(c.value[0]).lower()) if c.value else None
            stages.append(stages[parent] if parent is not None else ImageDefaults(complete=False))
            if len(c.value) >= 3 and str(c.value[1]).upper() == "AS":
                by_name[str(c.value[2]).lower()] = len(stages) - 1
            continue
        if not stages:
            continue
        image = stages[-1]
        if name == "USER":
            stages[-1] = replace(image, user=None if "$" in c.original or not c.value else str(c.value[0]))
        elif name == "WORKDIR":
            path = str(c.value[0]) if c.value else ""
            known = "$" not in path and (path.startswith("/") or image.workdir is not None)
            stages[-1] = replace(image, workdir=resolve_workdir(image.workdir or "/", path) if known else None)
        elif name == "HEALTHCHECK":
            stages[-1] = replace(image, healthcheck=_healthcheck(c))
    if not stages:
        return ImageDefaults(complete=False)
    target = by_name.get(build_target.lower()) if build_target is not None else None
    return stages[target if target is not None else -1]
