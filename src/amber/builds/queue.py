"""Who runs a build: the identity of a worker process, and which builds' workers are gone.

Builds in status ``waiting`` are claimed by workers with leases (the SQL is ``amber.store.builds``). A build whose
lease expired, or whose owner is a dead process on this host, belongs to a dead worker and is ended as
``interrupted``; a waiting build pinned to a dead process has lost its memory-only inputs.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from amber.store import builds
from amber.store.models import Build, utcnow


@dataclass(frozen=True)
class WorkerIdentity:
    """``host:pid:nonce`` — unique per server process; the host part finds builds of dead local processes."""

    host: str
    pid: int
    nonce: str

    @classmethod
    def current(cls) -> WorkerIdentity:
        return cls(host=socket.gethostname(), pid=os.getpid(), nonce=uuid.uuid4().hex[:8])

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.nonce}"

    @staticmethod
    def parse(text: str) -> WorkerIdentity | None:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return WorkerIdentity(host=parts[0], pid=int(parts[1]), nonce=parts[2])


def orphaned_builds(session: Session, me: WorkerIdentity) -> list[Build]:
    """Running builds whose worker is gone: lease expired, or owned by a dead process on this host."""
    now = utcnow()
    out = []
    for build in builds.running_builds(session):
        owner = WorkerIdentity.parse(build.lease_owner or "")
        if owner is not None and str(owner) == str(me):
            continue  # ours and running: a late lease renewal (a starved event loop) is not a dead worker
        expired = build.lease_expires_at is None or build.lease_expires_at < now
        local_dead = owner is not None and owner.host == me.host and str(owner) != str(me) and not _alive(owner.pid)
        restarted_here = owner is not None and owner.host == me.host and owner.pid == me.pid and owner.nonce != me.nonce
        if expired or local_dead or restarted_here or owner is None:
            out.append(build)
    return out


def stranded_waiting(session: Session, me: WorkerIdentity) -> list[Build]:
    """Waiting builds pinned to a process that no longer exists (their memory-only inputs are gone)."""
    out = []
    for build in builds.pinned_waiting_builds(session):
        owner = WorkerIdentity.parse(build.pinned_worker or "")
        if owner is None or (owner.host == me.host and str(owner) != str(me) and
                             (not _alive(owner.pid) or owner.pid == me.pid)):
            out.append(build)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
