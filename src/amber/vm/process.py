"""QEMU processes that cannot outlive their owner, per-VM run directories, and the sweep of leftovers.

Guarantees: every QEMU is started through ``setpriv --pdeathsig KILL`` from one long-lived launcher thread
(the death signal fires when the *thread* that forked exits, so pool threads must not fork VMs), so
SIGKILL of the owning process kills its VMs at once. Each VM's run directory records the owner's pid and
start time; ``sweep_stale`` kills any QEMU whose owner is gone (matched by its run directory on the
command line, never by name) and removes the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

RUN_PREFIX = "vm-"
SETPRIV = "/usr/bin/setpriv"
OWNER_FILE = "owner.json"

_launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amber-vm-launcher")


def spawn(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``cwd`` with stdout/stderr to ``log``; it dies with this process."""

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [SETPRIV, "--pdeathsig", "KILL", "--", *argv],
                cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop the VM cleanly
            )

    return _launcher.submit(start).result()


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def create_run_dir(data_dir: Path) -> Path:
    """A fresh ``<data_dir>/run/vm-<token>`` owned by this process."""
    root = data_dir / "run"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{RUN_PREFIX}{secrets.token_hex(6)}"
    path.mkdir(mode=0o700)
    owner = {"pid": os.getpid(), "start_time": process_start_time(os.getpid()), "created": time.time()}
    (path / OWNER_FILE).write_text(json.dumps(owner))
    return path


def kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            # Not our child: wait until it disappears (or is only a zombie of a dead parent).
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                return
            if state == "Z":
                return
        time.sleep(0.01)


@dataclass
class SweepReport:
    killed: list[int] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)


def _owner_alive(run_dir: Path) -> bool:
    try:
        owner = json.loads((run_dir / OWNER_FILE).read_text())
    except FileNotFoundError:
        # Being created right now, or a crash between mkdir and the owner file: judge by age.
        try:
            return time.time() - run_dir.stat().st_mtime < 60
        except FileNotFoundError:
            return True
    except ValueError:
        return False
    start = process_start_time(int(owner["pid"]))
    return start is not None and start == owner.get("start_time")


def sweep_stale(data_dir: Path) -> SweepReport:
    """Kill QEMU processes and remove run directories whose owning process is dead. Safe to call while
    other processes run VMs in the same data directory: their directories have a live owner."""
    report = SweepReport()
    root = data_dir / "run"
    if not root.is_dir():
        return report
    for run_dir in sorted(root.glob(f"{RUN_PREFIX}*")):
        if _owner_alive(run_dir):
            continue
        for pid in _qemu_pids(run_dir):
            kill_and_wait(pid)
            report.killed.append(pid)
        shutil.rmtree(run_dir, ignore_errors=True)
        report.removed.append(run_dir)
    return report


def _qemu_pids(run_dir: Path) -> list[int]:
    """QEMU processes belonging to ``run_dir``: its pidfile, confirmed by the process's cwd or command line,
    plus any process whose cwd is the run directory (the pidfile may not be written yet)."""
    real = str(run_dir.resolve())
    pids: set[int] = set()
    with contextlib.suppress(FileNotFoundError, ValueError):
        pids.add(int((run_dir / "qemu.pid").read_text().strip()))
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd") == real:
                    pids.add(int(proc.name))
            except OSError:
                continue
    return [p for p in pids if _cwd(p) == real or real in _cmdline(p)]


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""
