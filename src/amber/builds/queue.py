"""The durable build queue: builds in status ``waiting`` are claimed by workers with leases.

Claiming is a compare-and-set ``UPDATE … WHERE status = 'waiting'`` on one row, so any number of worker
processes on any number of hosts sharing a PostgreSQL database never run a build twice (on PostgreSQL the
candidate scan also uses ``FOR UPDATE SKIP LOCKED``). A running build's lease is renewed by its worker; a
build whose lease expired belongs to a dead worker and is ended as ``interrupted``.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

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


def claim_next(session: Session, owner: str, lease_secs: float, *, postgres: bool) -> Build | None:
    """Claim the oldest waiting build this worker may run (unpinned, or pinned to this process)."""
    query = (
        select(Build.id)
        .where(Build.status == "waiting", or_(Build.pinned_worker.is_(None), Build.pinned_worker == owner))
        .order_by(Build.created_at)
        .limit(8)
    )
    if postgres:
        query = query.with_for_update(skip_locked=True)
    now = utcnow()
    for build_id in session.scalars(query).all():
        claimed = session.execute(
            update(Build)
            .where(Build.id == build_id, Build.status == "waiting")
            .values(
                status="building",
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_secs),
                started_at=now,
                updated_at=now,
            )
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            return session.get(Build, build_id)
    return None


def renew_lease(session: Session, build_id: str, owner: str, lease_secs: float) -> tuple[str, datetime | None]:
    """Extend the lease; returns the build's status and cancel request time (how remote cancels arrive)."""
    session.execute(
        update(Build)
        .where(Build.id == build_id, Build.lease_owner == owner, Build.status == "building")
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_secs))
    )
    row = session.execute(select(Build.status, Build.cancel_requested_at).where(Build.id == build_id)).first()
    if row is None:
        return "deleted", None
    return row[0], row[1]


def orphaned_builds(session: Session, me: WorkerIdentity) -> list[Build]:
    """Running builds whose worker is gone: lease expired, or owned by a dead process on this host."""
    now = utcnow()
    out = []
    for build in session.scalars(select(Build).where(Build.status == "building")).all():
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
    for build in session.scalars(select(Build).where(Build.status == "waiting", Build.pinned_worker.is_not(None))):
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
