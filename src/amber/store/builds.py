"""Build records, their log entries and their leases: the SQL the build service and its workers run.

Guarantees:
- a log offset is taken by one atomic ``UPDATE … RETURNING`` on the build row (``take_offset``), so every writer
  on every host appends into one gap-free sequence, and the status change it carries commits with the entry;
- claiming is a compare-and-set ``UPDATE … WHERE status = 'waiting'`` on one row, so any number of workers on
  any number of hosts sharing a PostgreSQL database never run a build twice (on PostgreSQL the candidate scan
  also uses ``FOR UPDATE SKIP LOCKED``); a running build's lease is renewed by its worker;
- claiming is fair between namespaces: waiting builds are taken round robin by namespace (fewest running
  builds first, then the namespace that started one least recently, then the oldest build), a namespace at
  its limit of running builds (on every host together) is passed over, and so is a build whose memory does not
  fit the claiming worker's budget.
Every function takes an open ``Session``; the caller commits. Which lease owner is dead is decided above
(``amber.builds.queue``); these functions only read and write rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from amber.contract.status import ACTIVE_STATUSES
from amber.store.models import Artifact, Build, BuildLogEntry, Namespace, Template, utcnow

MAX_STORED_OFFSET = 2**63 - 1  # offsets are 64-bit signed integers in the database


def stored_offset(offset: int) -> int:
    """A requested log offset as a database value: any larger offset names no stored entry either."""
    return min(offset, MAX_STORED_OFFSET)


# -- log entries --------------------------------------------------------------------------------------------------


def take_offset(session: Session, build_id: str, values: dict[str, Any], *, allow_terminal: bool = False) -> int | None:
    """The next log offset of a build, setting ``values`` (status, timestamps …) on its row in the same statement.
    None when the build is gone or, unless ``allow_terminal``, no longer active (nothing follows a terminal entry)."""
    stmt = update(Build).where(Build.id == build_id)
    if not allow_terminal:
        stmt = stmt.where(Build.status.in_(ACTIVE_STATUSES))
    row = session.execute(
        stmt.values(log_next_offset=Build.log_next_offset + 1, **values).returning(Build.log_next_offset)
    ).first()
    return None if row is None else int(row[0]) - 1


def add_entry(session: Session, build_id: str, offset: int, kind: str, created_at: datetime, entry_json: str) -> None:
    """Store one log entry at the offset ``take_offset`` gave."""
    session.add(BuildLogEntry(build_id=build_id, offset=offset, kind=kind, created_at=created_at,
                              entry_json=entry_json))  # fmt: skip


def entries_from(session: Session, build_id: str, offset: int, limit: int) -> list[tuple[int, str, str]]:
    """``(offset, kind, entry_json)`` of the stored entries from ``offset`` on, ascending, at most ``limit``."""
    rows = session.execute(
        select(BuildLogEntry.offset, BuildLogEntry.kind, BuildLogEntry.entry_json)
        .where(BuildLogEntry.build_id == build_id, BuildLogEntry.offset >= stored_offset(offset))
        .order_by(BuildLogEntry.offset)
        .limit(limit)
    ).all()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def cache_entries(session: Session, build_id: str) -> list[str]:
    """The JSON of every ``cache`` entry a build logged."""
    return list(session.scalars(
        select(BuildLogEntry.entry_json).where(BuildLogEntry.build_id == build_id, BuildLogEntry.kind == "cache")))


# -- build rows ---------------------------------------------------------------------------------------------------


def status_of(session: Session, build_id: str) -> str | None:
    """The build's status, None when it no longer exists."""
    return session.scalar(select(Build.status).where(Build.id == build_id))


def build_with_context(session: Session, build_id: str) -> tuple[Build, Template, Namespace, bool] | None:
    """A build with its template, namespace and whether its artifact still exists, in one round trip (the status
    polling hot path); None when there is no such build."""
    row = session.execute(
        select(Build, Template, Namespace, Artifact.id)
        .join(Template, Template.id == Build.template_id)
        .join(Namespace, Namespace.id == Build.namespace_id)
        .outerjoin(Artifact, Artifact.id == Build.artifact_id)
        .where(Build.id == build_id)
    ).first()
    return None if row is None else (row[0], row[1], row[2], row[3] is not None)


def template_builds(
    session: Session,
    template_id: str,
    *,
    status: str | None,
    backend: str | None,
    source_type: str | None,
    before: str | None,
    limit: int,
) -> list[Build]:
    """A template's builds, newest first, filtered; ``before`` is a build id (the page cursor)."""
    query = select(Build).where(Build.template_id == template_id)
    if status:
        query = query.where(Build.status == status)
    if backend:
        query = query.where(Build.build_backend == backend)
    if source_type:
        query = query.where(Build.source_type == source_type)
    if before:
        query = query.where(Build.id < before)
    return list(session.scalars(query.order_by(Build.id.desc()).limit(limit)).all())


def active_build_ids(session: Session, template_id: str) -> list[str]:
    """Builds of the template that are still waiting or building."""
    return list(session.scalars(select(Build.id).where(Build.template_id == template_id,
                                                       Build.status.in_(ACTIVE_STATUSES))))  # fmt: skip


# -- queue and leases ---------------------------------------------------------------------------------------------


CLAIM_CANDIDATES = 200  # waiting builds looked at per claim (oldest first)
_FAIRNESS_WINDOW = timedelta(days=1)  # how far back "started least recently" looks


def _aware(moment: datetime | str) -> datetime:
    if isinstance(moment, str):  # an aggregate over a UTC column may come back as text on SQLite
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def build_memory_mib(build_config: dict[str, Any], default: int) -> int:
    """The memory a build's VM asks for (its declared ``build_config.memory_mib``, else ``default``)."""
    value = build_config.get("memory_mib") if isinstance(build_config, dict) else None
    return value if isinstance(value, int) and value > 0 else default


def claim_next(
    session: Session,
    owner: str,
    lease_secs: float,
    *,
    postgres: bool,
    namespace_limit: int | None = None,
    memory_budget_mib: int | None = None,
    default_memory_mib: int = 512,
) -> Build | None:
    """Claim the waiting build this worker should run next (unpinned, or pinned to this process), fairly between
    namespaces (module docstring): ``namespace_limit`` running builds per namespace at most (None: no limit);
    a build needing more than ``memory_budget_mib`` (None: no budget) stays waiting."""
    query = (
        select(Build.id, Build.namespace_id, Build.created_at, Build.build_config)
        .where(Build.status == "waiting", or_(Build.pinned_worker.is_(None), Build.pinned_worker == owner))
        .order_by(Build.created_at)
        .limit(CLAIM_CANDIDATES)
    )
    if postgres:
        query = query.with_for_update(skip_locked=True)
    now = utcnow()
    candidates = session.execute(query).all()
    if not candidates:
        return None
    running: dict[str, int] = {}
    for namespace_id, count in session.execute(
        select(Build.namespace_id, func.count()).where(Build.status == "building").group_by(Build.namespace_id)
    ).all():
        running[namespace_id] = int(count)
    last_start: dict[str, datetime] = {}
    for namespace_id, started in session.execute(
        select(Build.namespace_id, func.max(Build.started_at))
        .where(Build.started_at.is_not(None), Build.started_at > now - _FAIRNESS_WINDOW)
        .group_by(Build.namespace_id)
    ).all():
        if started is not None:
            last_start[namespace_id] = _aware(started)
    never = datetime.min.replace(tzinfo=UTC)

    def turn(row: Any) -> tuple[int, datetime, datetime]:
        return running.get(row.namespace_id, 0), last_start.get(row.namespace_id, never), _aware(row.created_at)

    ordered = []
    for row in sorted(candidates, key=turn):
        if namespace_limit is not None and running.get(row.namespace_id, 0) >= namespace_limit:
            continue
        if memory_budget_mib is not None and build_memory_mib(row.build_config, default_memory_mib) > memory_budget_mib:
            continue
        ordered.append(row.id)
    for build_id in ordered:
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


def running_builds(session: Session) -> list[Build]:
    """Every build in status ``building`` (with its lease owner and expiry)."""
    return list(session.scalars(select(Build).where(Build.status == "building")).all())


def pinned_waiting_builds(session: Session) -> list[Build]:
    """Waiting builds pinned to one process (their memory-only inputs live there)."""
    return list(session.scalars(select(Build).where(Build.status == "waiting", Build.pinned_worker.is_not(None))))
