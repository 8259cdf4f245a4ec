"""Who owns a process, directory or daemon: a pid plus that process's kernel start time (``/proc/PID/stat``
field 22), recorded as JSON. A record whose process is gone — or whose PID now belongs to a process started
later — has no live owner, and what it owns may be removed."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class Owner:
    pid: int
    start_time: int | None

    @staticmethod
    def current() -> Owner:
        return Owner(os.getpid(), process_start_time(os.getpid()))

    @property
    def alive(self) -> bool:
        """The very process that was recorded still runs (not merely some process with its PID)."""
        start = process_start_time(self.pid)
        return start is not None and start == self.start_time


def write_owner(path: Path, owner: Owner | None = None) -> None:
    """Record ``owner`` (default: this process) in ``path``, atomically."""
    owner = owner or Owner.current()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"pid": owner.pid, "start_time": owner.start_time, "created": time.time()}))
    os.replace(tmp, path)


def read_owner(path: Path) -> Owner | None:
    """The owner recorded in ``path``; None if there is no such file. A malformed record names a dead owner."""
    try:
        raw = json.loads(path.read_text())
        return Owner(int(raw["pid"]), raw.get("start_time"))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return Owner(0, None)
