"""Starting children that cannot outlive Amber, finding the processes that use a directory, and stopping them.

``spawn`` starts every child through ``setpriv --pdeathsig`` from one long-lived launcher thread: the death
signal fires when the *thread* that forked exits, so children must never be forked from short-lived pool
threads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

SETPRIV = "/usr/bin/setpriv"

_launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amber-launcher")


def spawn(
    argv: list[str],
    *,
    death_signal: signal.Signals = signal.SIGKILL,
    cwd: Path | None = None,
    stdout: IO[bytes] | int | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (a terminal's Ctrl-C reaches only Amber, which stops it in order); it
    receives ``death_signal`` as soon as this process dies, however it dies."""
    sig = signal.Signals(death_signal).name.removeprefix("SIG")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [SETPRIV, "--pdeathsig", sig, "--", *argv],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT if stdout else None,
            env=None if env is None else dict(env), start_new_session=True,
        )  # fmt: skip

    return _launcher.submit(start).result()


def running(pid: int) -> bool:
    """Running (a zombie counts as gone: PID 1 here may reap slowly)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def pids_using(*directories: Path) -> list[int]:
    """Live processes (never this one) whose command line names a path under one of ``directories`` or whose
    working directory is under one: what a dead owner left running there."""
    roots = [str(d.resolve()) for d in directories]
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        pid = int(proc.name)
        line, cwd = cmdline(pid), _cwd(pid)
        if any(root in line or cwd == root or cwd.startswith(root + "/") for root in roots) and running(pid):
            found.append(pid)
    return sorted(found)


def stop(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True once the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running(pid):
        _reap(pid)
        time.sleep(0.05)
    if running(pid):
        return kill_and_wait(pid)
    return True


def kill_and_wait(pid: int, timeout: float = 10.0) -> bool:
    """SIGKILL and wait until the process is gone (or only a zombie); True if it is."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not running(pid):
            return True
        time.sleep(0.01)
    return not running(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
