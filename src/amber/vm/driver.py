"""What callers may rely on from a VM driver, as two protocols: ``Driver`` starts machines, ``Machine`` is one.

Each method states its preconditions (what the caller must ensure) and its guarantees (what holds when it
returns, and when it raises). The implementation is ``amber.vm.qemu`` (``QemuDriver``, ``MicroVM``); callers that
only boot, run commands, checkpoint and snapshot (the build pipeline) take a ``Driver``. Errors are the
``amber.vm.errors`` hierarchy: every failure is a ``VMError`` subclass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from amber.vm.agent import AgentClient, ExecResult, OutputCallback, RunningExec
from amber.vm.artifact import TemplateArtifact
from amber.vm.machine import DiskChain, MachineDescription, MemoryBackend


class Machine(Protocol):
    """One running VM: a guest with an agent, a read-only disk chain and one writable overlay on top.

    Life cycle: started by ``Driver.boot`` or ``Driver.restore``; ended by ``close`` or ``snapshot`` (which
    closes it). Thread safety: ``exec`` and ``agent`` requests may run concurrently from any thread;
    ``checkpoint_disk``, ``snapshot`` and ``live_snapshot`` must not overlap one another; ``close`` may be
    called at any time, from any thread, any number of times.
    """

    @property
    def agent(self) -> AgentClient:
        """The guest agent (commands, files, probes; see ``AgentClient``).

        Requires: the machine is running. Raises ``VMError`` once it is closed."""
        ...

    def alive(self) -> bool:
        """True while the VM process runs and ``close`` has not been called (never raises)."""
        ...

    def exec(
        self,
        argv: Sequence[str] | None = None,
        *,
        shell: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_start: Callable[[RunningExec], None] | None = None,
    ) -> ExecResult:
        """Run one command in the guest through the agent and wait for it to exit (see ``AgentClient.exec``).

        Requires: ``argv`` or ``shell`` (run by /bin/sh -c); the machine is running. Guarantees: output goes to
        ``on_stdout``/``on_stderr`` as the guest produces it, else into the result; ``timeout`` kills the command's
        whole process group, reported as ``timed_out``; a non-zero exit does not raise. Raises ``AgentError``
        (with the guest's errno) when the guest cannot start it (unknown user, missing cwd or command; the message
        never holds ``env`` values), ``AgentDisconnected`` if the VM stops meanwhile."""
        ...

    def checkpoint_disk(self, new_overlay: Path) -> DiskChain:
        """Freeze the current overlay into an immutable layer and continue on a fresh overlay, without a reboot.

        Requires: the machine was started with a caller-owned ``overlay`` (else ``VMError``); ``new_overlay``
        does not exist. Guarantees: the guest's filesystems are synced and frozen for the switch, then thawed;
        the returned chain ends with the previous overlay, which is never written again (safe to hash, share and
        boot other machines from while this one runs on ``new_overlay``). If the hypervisor refuses the switch,
        ``new_overlay`` is removed and the machine runs on its previous overlay (``VMError``)."""
        ...

    def snapshot(self, out_dir: Path, progress: Callable[[str], None] | None = None,
                 on_stopped: Callable[[], None] | None = None) -> TemplateArtifact:
        """Write a template artifact of this machine to ``out_dir`` and end the machine.

        Requires: ``out_dir`` does not exist; no other disk operation of this machine in flight. Guarantees:
        the guest is synced and stopped with no agent request half-received; ``on_stopped`` runs while it is
        stopped (what the guest sent before is all it sent); the artifact is complete and checksummed when this
        returns and is never written afterwards. Always ends the machine; on error (``SnapshotError``,
        ``ArtifactError``) nothing is left at ``out_dir``. One snapshot per machine."""
        ...

    def live_snapshot(self, out_dir: Path, next_overlay: Path,
                      on_stopped: Callable[[], None] | None = None) -> TemplateArtifact:
        """Write a template artifact of this machine as it is now; the machine keeps running on ``next_overlay``.

        Requires: private guest memory (a restored machine; else ``SnapshotError``); neither ``out_dir`` nor
        ``next_overlay`` exists. Guarantees: the guest is paused only while its state is written
        (``artifact.snapshot_seconds``); the overlay frozen at that instant stays a read-only layer of this
        machine. On failure the machine runs on when it can, nothing is left at ``out_dir`` and
        ``next_overlay`` is removed."""
        ...

    def close(self) -> None:
        """Stop the VM process and remove everything of it except caller-owned overlays and artifacts.

        Guarantees: idempotent; never raises for a VM that already died."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """``close``."""
        ...


class Driver(Protocol):
    """Starts machines on this host (one data directory and accelerator choice per driver)."""

    def fingerprint(self) -> str:
        """Identity of what a snapshot depends on besides its disk: kernel, initramfs, agent, hypervisor version
        and accelerator. Two drivers with one fingerprint restore each other's artifacts.

        Requires: the guest image is installed (else ``GuestMissing``)."""
        ...

    def describe(self, *, cpus: int, memory_mib: int, network: bool = True,
                 memory_backend: MemoryBackend = MemoryBackend.FILE) -> MachineDescription:
        """The machine a boot with these settings would get on this host (reads host facts; starts nothing).

        Raises ``VMError`` for settings out of range, ``GuestMissing`` without a guest image."""
        ...

    def boot(
        self,
        disk: DiskChain | Path,
        *,
        overlay: Path | None = None,
        cpus: int = 1,
        memory_mib: int = 512,
        internet: bool = False,
        zero_freed_memory: bool = False,
        hostname: str | None = None,
        timeout: float = 120.0,
    ) -> Machine:
        """Boot a fresh guest from ``disk`` and return it once its agent answers.

        Requires: every layer of ``disk`` exists; ``overlay``, if given, does not. Guarantees: the layers are
        never written; the guest writes only to ``overlay`` (else a private overlay that goes with the machine);
        ``internet`` on reaches only the outside world, off nothing at all; ``zero_freed_memory`` keeps what
        finished commands held out of a later snapshot's memory. Raises ``BootError`` (with the console's tail)
        if the agent does not answer within ``timeout`` seconds; nothing is left behind then."""
        ...

    def restore(
        self,
        artifact: Path | TemplateArtifact,
        *,
        overlay: Path | None = None,
        cpus: int | None = None,
        memory_mib: int | None = None,
        internet: bool = False,
        hostname: str | None = None,
        timeout: float = 60.0,
    ) -> Machine:
        """Start a machine from a template artifact, through the same start path as ``boot``, and return it once
        its agent has answered.

        Requires: a complete artifact (else ``ArtifactError``) taken on the same machine (``cpus``/``memory_mib``
        None take the artifact's; any difference, or a different hypervisor, accelerator or kernel, raises
        ``MachineMismatch`` before anything starts); ``overlay``, if given, does not exist. Guarantees: the
        artifact's files are never written (memory is mapped copy-on-write); the guest's clock is set, its RNG
        reseeded and its boot_id new, so restores of one artifact share neither clocks nor random streams;
        ``internet`` is this restore's own choice. Raises ``BootError`` when the restore fails; nothing is left
        behind then."""
        ...
