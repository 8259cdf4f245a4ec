"""Reading an inline Dockerfile for plan/validate, with BuildKit's own parser (the ``dockerfile`` package). Pure."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

import dockerfile

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
