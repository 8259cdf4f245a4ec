"""Warm pool records and their controller leases: the SQL the warm-pool service and controller run.

A pool's parked VMs live in the process whose controller holds the pool's lease (``lease_owner`` until
``lease_expires_at``); taking a lease is a compare-and-set ``UPDATE``, so with several servers on one PostgreSQL
database each pool is warmed by exactly one of them. Every function takes an open ``Session``; the caller commits.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from amber.store.models import WarmPool, utcnow


def add_pool(session: Session, pool: WarmPool) -> None:
    session.add(pool)
    session.flush()


def get_pool(session: Session, namespace_id: str, pool_id: str) -> WarmPool | None:
    """The pool ``pool_id`` of ``namespace_id``; None for another namespace's or a deleted one."""
    row = session.get(WarmPool, pool_id)
    if row is None or row.namespace_id != namespace_id or row.state == "deleted":
        return None
    return row


def pool_by_id(session: Session, pool_id: str) -> WarmPool | None:
    return session.get(WarmPool, pool_id)


def list_pools(session: Session, namespace_id: str, *, template: str | None, state: str | None) -> list[WarmPool]:
    stmt = select(WarmPool).where(WarmPool.namespace_id == namespace_id)
    stmt = stmt.where(WarmPool.state == state) if state else stmt.where(WarmPool.state != "deleted")
    if template:
        stmt = stmt.where(WarmPool.template_ref == template)
    return list(session.scalars(stmt.order_by(WarmPool.created_at, WarmPool.id)))


def update_pool(session: Session, pool_id: str, **values: Any) -> None:
    session.execute(update(WarmPool).where(WarmPool.id == pool_id).values(updated_at=utcnow(), **values))


def count(session: Session, pool_id: str, field: str, by: int = 1) -> None:
    """Add ``by`` to one of the pool's counters (``claimed``, ``failed``, ``expired``)."""
    column = getattr(WarmPool, field)
    session.execute(update(WarmPool).where(WarmPool.id == pool_id).values({column: column + by}))


def lease_pools(session: Session, owner: str, lease_secs: float) -> list[WarmPool]:
    """Take or renew the lease of every pool that is free, expired or already ``owner``'s; return the pools
    ``owner`` now holds (deleted ones included, so their VMs are released)."""
    now = utcnow()
    session.execute(update(WarmPool).where(or_(
        WarmPool.lease_owner.is_(None), WarmPool.lease_owner == owner, WarmPool.lease_expires_at < now,
    )).values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_secs)))
    return list(session.scalars(select(WarmPool).where(WarmPool.lease_owner == owner)))


def lease_owners(session: Session) -> list[str]:
    return [o for o in session.scalars(select(WarmPool.lease_owner).distinct()) if o]


def release_leases(session: Session, owner: str) -> None:
    session.execute(update(WarmPool).where(WarmPool.lease_owner == owner).values(lease_owner=None,
                                                                                lease_expires_at=None))
