"""Amber's microVM runtime: a VM driver protocol and its QEMU ``microvm`` implementation (QMP), a guest agent
over virtio-serial, snapshots to template artifacts and lazy copy-on-write restores.

Everything outside ``amber.vm`` imports only what this module exports (an import-linter contract keeps every
module under it private). Layout: ``driver`` (the ``Driver``/``Machine`` protocols, each method's preconditions
and guarantees), ``agent``/``job``/``aio``/``protocol``/``files`` (the agent client), ``artifact`` (the artifact
format), ``machine`` (``DiskChain``, ``MachineDescription``), ``qemu/`` (the implementation: ``QemuDriver``,
``boot``/``restore`` on one start path, ``MicroVM``, QMP, run directories and sweeps).

Public API:

- ``Driver`` / ``Machine``: the protocols; ``QemuDriver(data_dir, accel=)`` is the ``Driver`` (``fingerprint``,
  ``describe``, ``boot``, ``restore``) and ``MicroVM`` the ``Machine``
- ``boot(disk, data_dir=…, cpus=, memory_mib=, internet=, memory_backend=, accel=, overlay=, hostname=,
  boot_timeout=)`` → ``MicroVM``
- ``restore(artifact_dir, data_dir=…, [cpus=, memory_mib=, internet=, accel=, overlay=, hostname=,
  verify_checksums=, timeout=, first_request_id=, attach=])`` → ``MicroVM`` (clock set, RNG reseeded, new
  boot_id; ``attach`` keeps the frames of jobs started before the snapshot for ``vm.agent.attach(id)``)
- ``MicroVM``: context manager; ``exec(...)`` → ``ExecResult``; ``agent`` (``AgentClient``);
  ``checkpoint_disk(new_overlay)`` → ``DiskChain``; ``snapshot(out_dir)`` / ``live_snapshot(out_dir,
  next_overlay)`` → ``TemplateArtifact``; ``close()``
- ``AgentClient``: ``exec`` (blocking), ``start``/``relay``/``attach`` → ``Job`` (driven by the reader
  thread, no thread per command), ``set_env``; files ``stat``/``exists``/``list_dir``/``mkdir``/``remove``/
  ``rename``/``chmod``/``read_file_chunks``/``write_file_chunks`` (→ ``FileStat``; each optionally as a guest
  ``user``), ``write_file``/``read_file``; ``tcp_probe``, ``http_probe``, ``sync``, ``post_restore``, ``quiesce``
- ``AsyncJob``: the asyncio face of a ``Job`` (await start and exit, iterate output)
- ``DiskChain.of(base, *layers)``, ``virtual_size(layer)``, ``TemplateArtifact.load(dir)`` (``checksums``,
  ``manifest_sha256``, ``size_bytes``, ``verify``), ``resolve_accel(accel)``, ``sweep_stale(data_dir)``,
  ``sweep_snapshot_staging(directory, data_dir)``

Guarantees and limits:

- A fresh guest that hangs while booting (QEMU runs, its agent never answers: seen rarely under TCG, early in
  the kernel) is booted once more before ``boot`` raises ``GuestHung`` (a ``BootError``).
- No stray processes: QEMU dies with its owner (parent-death signal) and on ``close``/errors; the first VM
  call of a process in a data directory sweeps run directories whose owner died (``sweep_stale``); a snapshot
  interrupted by its owner's death leaves a staging directory only until ``sweep_snapshot_staging``.
- Disks: chain layers are never written; every VM writes only its own fresh qcow2 overlay.
- Accelerator: KVM only where the host CPU has vmx/svm, else TCG (override: ``accel=`` or AMBER_ACCEL).
  Under TCG guest CPU work is ~20x slower; boot to agent ~2 s, restore to agent ~0.2 s.
- Guest: kernel and agent from ``amber setup-guest``; the agent is PID 1 and nothing is written into the
  image except mount points it needs (/dev, /proc, /sys, /dev/pts, /dev/shm) and, with ``network``,
  /etc/resolv.conf.
- Network: every VM has a NIC (its presence is part of the machine); ``internet`` is chosen per boot and per
  restore: on, the guest reaches only the outside world (never the host's loopback or addresses, nor other
  guests); off, nothing at all (``amber.isolation``; a VM whose network cannot be isolated does not start).
- One snapshot per VM (QEMU cannot migrate twice). A restored VM can be snapshotted, but its RAM is a private
  copy of the template's, so that snapshot writes all of it to ``state.bin`` (not lazy).
- Thread-safe: ``exec`` and agent requests may run concurrently from many threads (up to 256 guest jobs:
  commands, relays, probes and recursive removals); ``Job`` callbacks run in the agent's reader thread and
  must not wait for agent answers; ``checkpoint_disk`` and ``snapshot`` must not overlap other disk writes
  of the same VM.
- Agent errors carry the guest's ``errno`` (``AgentError.errno``); their messages name only guest paths
  and never contain env values.
"""

from amber.vm.agent import AgentClient, ExecResult, FileInfo, FileStat, FileType, Job, RunningExec
from amber.vm.aio import AsyncJob
from amber.vm.artifact import TemplateArtifact
from amber.vm.driver import Driver, Machine
from amber.vm.errors import (
    AgentDisconnected,
    AgentError,
    AgentTimeout,
    ArtifactError,
    BootError,
    GuestHung,
    MachineMismatch,
    SnapshotError,
    VMError,
)
from amber.vm.machine import (
    Accel,
    DiskChain,
    DiskFormat,
    DiskLayer,
    MachineDescription,
    MemoryBackend,
    virtual_size,
)
from amber.vm.protocol import SyncMode
from amber.vm.qemu import MicroVM, QemuDriver, boot, resolve_accel, restore, sweep_snapshot_staging, sweep_stale

__all__ = [
    "Accel",
    "AgentClient",
    "AgentDisconnected",
    "AgentError",
    "AgentTimeout",
    "ArtifactError",
    "AsyncJob",
    "BootError",
    "DiskChain",
    "DiskFormat",
    "DiskLayer",
    "Driver",
    "ExecResult",
    "FileInfo",
    "FileStat",
    "FileType",
    "GuestHung",
    "Job",
    "Machine",
    "MachineDescription",
    "MachineMismatch",
    "MemoryBackend",
    "MicroVM",
    "QemuDriver",
    "RunningExec",
    "SnapshotError",
    "SyncMode",
    "TemplateArtifact",
    "VMError",
    "boot",
    "resolve_accel",
    "restore",
    "sweep_snapshot_staging",
    "sweep_stale",
    "virtual_size",
]
