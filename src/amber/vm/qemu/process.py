"""QEMU processes that cannot outlive their owner, per-VM run directories, and the sweep of leftovers.

Guarantees: every QEMU is started through ``setpriv --pdeathsig KILL`` from one long-lived launcher thread
(``amber.host.processes.spawn``), so SIGKILL of the owning process kills its VMs at once. Each VM's run
directory records its owner (``amber.host.owners``: pid and start time); ``sweep_stale`` kills any QEMU whose
owner is gone (matched by its run directory on the command line or as its working directory, never by name)
and removes the directory. A snapshot stages its artifact next to it under a name that carries its run
directory (``staging_name``); ``sweep_snapshot_staging`` removes those whose VM is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from amber.host import files, processes
from amber.host.owners import read_owner, write_owner

RUN_PREFIX = "vm-"
OWNER_FILE = "owner.json"
# A snapshot's staging directory next to its artifact: ``.<artifact>.tmp-<pid>-<run dir>`` (microvm.snapshot).
_STAGING_RE = re.compile(r"\..+\.tmp-[0-9]+-(" + RUN_PREFIX + r"[0-9a-f]+)")

__all__ = ["SweepReport", "create_run_dir", "kill_and_wait", "spawn", "staging_name", "sweep_snapshot_staging",
           "sweep_stale"]


def spawn(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``cwd`` with stdout/stderr to ``log``; it is SIGKILLed when this process dies."""
    with log.open("ab") as out:
        return processes.spawn(argv, death_signal=signal.SIGKILL, cwd=cwd, stdout=out)


def create_run_dir(data_dir: Path) -> Path:
    """A fresh ``<data_dir>/run/vm-<token>`` owned by this process."""
    root = data_dir / "run"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{RUN_PREFIX}{secrets.token_hex(6)}"
    path.mkdir(mode=0o700)
    write_owner(path / OWNER_FILE)
    return path


def staging_name(out_dir: Path, run_dir: Path) -> Path:
    """Where ``snapshot`` writes an artifact before renaming it to ``out_dir``; the name says which VM (run
    directory) writes it, so a sweep can tell a live snapshot from a dead one's leftovers."""
    return out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{run_dir.name}")


def kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    processes.kill_and_wait(pid, timeout)


@dataclass
class SweepReport:
    killed: list[int] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # what could not be removed, and why


def _owner_alive(run_dir: Path) -> bool:
    owner = read_owner(run_dir / OWNER_FILE)
    if owner is None:
        # Being created right now, or a crash between mkdir and the owner file: judge by age.
        try:
            return time.time() - run_dir.stat().st_mtime < 60
        except FileNotFoundError:
            return True
    return owner.alive


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
        _remove(run_dir, report)
    return report


def sweep_snapshot_staging(directory: Path, data_dir: Path) -> SweepReport:
    """Remove snapshot staging directories in ``directory`` whose VM is gone or has a dead owner (a snapshot
    interrupted by a crash); a snapshot in progress keeps its run directory, with a live owner, until it ends."""
    report = SweepReport()
    if not directory.is_dir():
        return report
    for entry in sorted(directory.iterdir()):
        match = _STAGING_RE.fullmatch(entry.name)
        if match is None:
            continue
        run_dir = data_dir / "run" / match.group(1)
        if run_dir.is_dir() and _owner_alive(run_dir):
            continue
        _remove(entry, report)
    return report


def _remove(path: Path, report: SweepReport) -> None:
    problem = files.remove(path)
    if problem is None:
        report.removed.append(path)
    else:
        report.failed.append((path, problem))


def _qemu_pids(run_dir: Path) -> list[int]:
    """QEMU processes belonging to ``run_dir``: its pidfile, confirmed by the process's cwd or command line,
    plus any process whose cwd is the run directory (the pidfile may not be written yet)."""
    real = str(run_dir.resolve())
    pids: set[int] = set()
    with contextlib.suppress(FileNotFoundError, ValueError):
        pids.add(int((run_dir / "qemu.pid").read_text().strip()))
    pids.update(processes.pids_using(run_dir))
    return [p for p in pids if processes.running(p) and (_cwd(p) == real or real in processes.cmdline(p))]


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""

