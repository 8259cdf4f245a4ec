"""The exceptions of the VM runtime: one shallow hierarchy under ``VMError``."""

from __future__ import annotations


class VMError(Exception):
    """Anything the VM runtime could not do; the message says what and why."""


class BootError(VMError):
    """QEMU did not start or the guest agent never answered; carries the tail of the serial console."""


class GuestHung(BootError):
    """QEMU kept running but the freshly booted guest's agent never answered: the guest hung while booting
    (seen rarely under TCG, early in the kernel). ``boot`` tries once more before raising it."""


class AgentError(VMError):
    """The guest agent refused or failed a request (bad path, unknown user, exec failure…)."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class AgentDisconnected(VMError):
    """The agent connection closed (the VM stopped or crashed) while a request was in flight."""


class AgentTimeout(VMError):
    """The agent did not answer within the host-side deadline."""


class SnapshotError(VMError):
    """Taking a snapshot failed; the VM is stopped and its run directory removed."""


class ArtifactError(VMError):
    """A template artifact is incomplete or damaged (missing file, wrong size or checksum)."""


class MachineMismatch(VMError):
    """A restore asked for a machine that differs from the one the artifact was taken on."""
