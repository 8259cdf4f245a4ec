"""Machine records, machine snapshots and idempotency keys: the SQL the machine manager runs.

Every query of a machine or snapshot is scoped to a namespace (another namespace's rows are simply not found).
Env values are never written here (``Machine.env_keys`` holds names only). Every function takes an open
``Session``; the caller commits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from amber.store.models import IdempotencyKey, Machine, MachineSnapshot, utcnow

TOMBSTONE_SECS = 3600.0  # a destroyed machine answers GET (status ``destroyed``) this long, then 404
IDEMPOTENCY_TTL = timedelta(hours=24)

# -- machines -------------------------------------------------------------------------------------------------------


def add_machine(session: Session, machine: Machine) -> None:
    session.add(machine)
    session.flush()


def get_machine(session: Session, namespace_id: str, machine_id: str, *, tombstones: bool = True) -> Machine | None:
    """The machine ``machine_id`` of ``namespace_id`` (None for another namespace's or an expired tombstone)."""
    row = session.get(Machine, machine_id)
    if row is None or row.namespace_id != namespace_id:
        return None
    if row.status == "destroyed" and (not tombstones or _expired(row.ended_at)):
        return None
    return row


def _expired(ended_at: datetime | None) -> bool:
    return ended_at is not None and (utcnow() - ended_at).total_seconds() > TOMBSTONE_SECS


def machine_by_id(session: Session, machine_id: str) -> Machine | None:
    """Unscoped: for the manager's own bookkeeping, never for answering a caller."""
    return session.get(Machine, machine_id)


def list_machines(
    session: Session,
    namespace_id: str,
    *,
    statuses: Sequence[str] | None,
    template: str | None,
    metadata: dict[str, Any] | None,
    limit: int,
    after: str | None,
) -> list[Machine]:
    """Machines of a namespace by id (creation order), after the id ``after``; ``statuses`` None = every status but
    ``destroyed``; ``metadata`` = subset match. Returns up to ``limit + 1`` rows (the extra one says "more")."""
    stmt = select(Machine).where(Machine.namespace_id == namespace_id)
    stmt = stmt.where(Machine.status.in_(list(statuses))) if statuses else stmt.where(Machine.status != "destroyed")
    if template:
        stmt = stmt.where(Machine.template_ref == template)
    if after:
        stmt = stmt.where(Machine.id > after)
    stmt = stmt.order_by(Machine.id)
    out: list[Machine] = []
    # The metadata subset match is done here: JSON containment differs between SQLite and PostgreSQL.
    for row in session.scalars(stmt):
        if row.status == "destroyed" and _expired(row.ended_at):
            continue
        if metadata and any(row.user_metadata.get(k) != v for k, v in metadata.items()):
            continue
        out.append(row)
        if len(out) > limit:
            break
    return out


def update_machine(session: Session, machine_id: str, **values: Any) -> None:
    session.execute(update(Machine).where(Machine.id == machine_id).values(**values))


def machines_with_status(session: Session, statuses: Iterable[str]) -> list[Machine]:
    return list(session.scalars(select(Machine).where(Machine.status.in_(list(statuses)))))


def count_live(session: Session, owner: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Machine).where(
        Machine.owner == owner, Machine.status.in_(["creating", "running"]))) or 0)


# -- snapshots ------------------------------------------------------------------------------------------------------


def add_snapshot(session: Session, snapshot: MachineSnapshot) -> None:
    session.add(snapshot)
    session.flush()


def get_snapshot(
    session: Session, namespace_id: str, snapshot_id: str, *, kind: str | None = None
) -> MachineSnapshot | None:
    row = session.get(MachineSnapshot, snapshot_id)
    if row is None or row.namespace_id != namespace_id or row.deleted_at is not None:
        return None
    if kind is not None and row.kind != kind:
        return None
    return row


def snapshot_by_id(session: Session, snapshot_id: str) -> MachineSnapshot | None:
    return session.get(MachineSnapshot, snapshot_id)


def list_snapshots(session: Session, namespace_id: str, *, kind: str, machine_id: str | None) -> list[MachineSnapshot]:
    stmt = select(MachineSnapshot).where(MachineSnapshot.namespace_id == namespace_id, MachineSnapshot.kind == kind,
                                         MachineSnapshot.deleted_at.is_(None))
    if machine_id:
        stmt = stmt.where(MachineSnapshot.machine_id == machine_id)
    return list(session.scalars(stmt.order_by(MachineSnapshot.created_at, MachineSnapshot.id)))


def mark_snapshot_deleted(session: Session, snapshot_id: str) -> None:
    session.execute(update(MachineSnapshot).where(MachineSnapshot.id == snapshot_id).values(deleted_at=utcnow()))


def machines_using_snapshot(session: Session, snapshot_id: str) -> list[str]:
    """Machines not yet destroyed that were restored from (and so depend on) ``snapshot_id``."""
    return list(session.scalars(select(Machine.id).where(Machine.source_snapshot_id == snapshot_id,
                                                         Machine.status != "destroyed")))


FORK_GRACE = timedelta(minutes=2)  # a fork snapshot exists briefly before its child's row does


def snapshots_to_collect(session: Session) -> list[MachineSnapshot]:
    """Deleted snapshots, and fork snapshots past their grace: candidates whose storage goes once no machine
    uses them."""
    return list(session.scalars(select(MachineSnapshot).where(or_(
        MachineSnapshot.deleted_at.is_not(None),
        and_(MachineSnapshot.kind == "fork", MachineSnapshot.created_at < utcnow() - FORK_GRACE)))))


def forget_snapshot(session: Session, snapshot_id: str) -> None:
    session.execute(delete(MachineSnapshot).where(MachineSnapshot.id == snapshot_id))


# -- idempotency keys -----------------------------------------------------------------------------------------------


def claim_idempotency_key(
    session: Session, namespace_id: str, operation: str, key: str, request_hash: str, owner: str
) -> IdempotencyKey | None:
    """Insert a ``pending`` key and return None, or return the key's existing row (a retry). An expired row is
    replaced."""
    existing = session.get(IdempotencyKey, (namespace_id, operation, key))
    if existing is not None:
        if utcnow() - existing.created_at <= IDEMPOTENCY_TTL:
            return existing
        session.delete(existing)
        session.flush()
    try:
        with session.begin_nested():
            session.add(IdempotencyKey(namespace_id=namespace_id, operation=operation, key=key,
                                       request_hash=request_hash, state="pending", owner=owner))
    except IntegrityError:  # a concurrent first request won the insert
        return session.get(IdempotencyKey, (namespace_id, operation, key))
    return None


def finish_idempotency_key(
    session: Session, namespace_id: str, operation: str, key: str, status_code: int, body: dict[str, Any]
) -> None:
    session.execute(update(IdempotencyKey).where(
        IdempotencyKey.namespace_id == namespace_id, IdempotencyKey.operation == operation, IdempotencyKey.key == key,
    ).values(state="done", status_code=status_code, response_json=json.dumps(body)))


def release_idempotency_key(session: Session, namespace_id: str, operation: str, key: str) -> None:
    session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.namespace_id == namespace_id, IdempotencyKey.operation == operation,
        IdempotencyKey.key == key))


def expire_idempotency_keys(session: Session) -> int:
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - IDEMPOTENCY_TTL))
    return int(getattr(result, "rowcount", 0) or 0)


def release_pending_keys_of(session: Session, owners: Iterable[str]) -> None:
    """Pending keys of dead owners: their request never finished, so a retry starts it again."""
    owners = list(owners)
    if owners:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.state == "pending",
                                                     IdempotencyKey.owner.in_(owners)))
