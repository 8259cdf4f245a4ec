"""The sweep: what Amber processes that died (SIGKILL, OOM, power loss) left in a data directory, removed.

Amber owns every process, mount and temporary directory it creates, and records the owner (pid and start time,
``amber.host.owners``) where one may outlive it:

- the managed dockerd, its containerd, shims and build steps, and their mounts (``buildkit.daemon``);
- QEMU processes and their run directories ``run/vm-*`` (``amber.vm``);
- snapshot staging directories ``artifacts/.<build>.tmp-<pid>-vm-*`` (``amber.vm``);
- other ``*.tmp-<pid>`` files and directories Amber writes before renaming them into place (the guest's);
- mounts inside anything it removes (unmounted first, never deleted through).

``sweep(data_dir)`` removes whatever has no live owner and reports what it could not remove (``failed``); what a
live process owns (another server or CLI on the same data directory, a build in progress) is never touched.
``amber serve`` sweeps on start, before anything else runs, and every ``AMBER_SWEEP_INTERVAL_SECS``; ``amber
cache usage`` sweeps and lists anything left. Build work directories and the artifacts of interrupted builds are
the build service's recovery (``builds.service``), which knows which builds ended.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from amber.buildkit import daemon
from amber.host import files, processes
from amber.vm import sweep_snapshot_staging, sweep_stale

_TMP_RE = re.compile(r"\..+\.tmp-([0-9]+)")  # ``.<name>.tmp-<pid>``: written by <pid>, renamed when complete


@dataclass
class SweepReport:
    stopped: list[str] = field(default_factory=list)  # "dockerd 123" …
    unmounted: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # left behind, and why

    @property
    def empty(self) -> bool:
        return not (self.stopped or self.unmounted or self.removed or self.failed)

    def summary(self) -> str:
        parts = [f"stopped {len(self.stopped)} process(es)" if self.stopped else "",
                 f"unmounted {len(self.unmounted)} mount(s)" if self.unmounted else "",
                 f"removed {len(self.removed)} leftover(s)" if self.removed else "",
                 f"could not remove {len(self.failed)}" if self.failed else ""]  # fmt: skip
        return ", ".join(p for p in parts if p) or "nothing left behind"


def sweep(data_dir: Path) -> SweepReport:
    """Remove what dead Amber processes left in ``data_dir`` (see the module docstring); safe at any time."""
    data_dir = data_dir.resolve()
    report = SweepReport()
    if not data_dir.is_dir():
        return report
    docker = daemon.sweep_orphaned(data_dir)
    report.stopped += [f"dockerd/containerd/build process {pid}" for pid in docker.stopped]
    report.unmounted += docker.unmounted
    report.failed += docker.failed
    vms = sweep_stale(data_dir)
    report.stopped += [f"qemu {pid}" for pid in vms.killed]
    for result in (vms, sweep_snapshot_staging(data_dir / "artifacts", data_dir)):
        report.removed += result.removed
        report.failed += result.failed
    _sweep_tmp(data_dir / "guest", report)
    return report


def _sweep_tmp(directory: Path, report: SweepReport) -> None:
    """``.<name>.tmp-<pid>`` entries whose writer is gone."""
    if not directory.is_dir():
        return
    for entry in sorted(directory.iterdir()):
        match = _TMP_RE.fullmatch(entry.name)
        if match is None or processes.running(int(match.group(1))):
            continue
        problem = files.remove(entry)
        if problem is None:
            report.removed.append(entry)
        else:
            report.failed.append((entry, problem))
