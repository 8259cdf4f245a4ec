"""Fair claims (issue 11): waiting builds are taken round robin by namespace, a namespace at its limit of
running builds is passed over, and a build whose memory does not fit the claiming worker's budget waits.
SQLite and PostgreSQL, a fresh database per module (claims look at every waiting build)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from amber.store import catalog, ids, keys
from amber.store.builds import claim_next
from amber.store.database import Database, migrate
from amber.store.models import Build, utcnow


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    migrate(database_url)
    database = Database(database_url)
    with database.session() as session:  # every test starts with an empty queue
        session.execute(update(Build).values(status="cancelled"))
    yield database
    database.dispose()


def submit(db: Database, namespace: str, *, memory_mib: int | None = None, age_secs: float = 0.0) -> str:
    with db.session() as session:
        ns = keys.ensure_namespace(session, namespace)
        caller = keys.Caller(key_id="k", namespace_id=ns.id, namespace_slug=ns.slug)
        template = catalog.build_target(session, caller, "fair-" + ids.build_id()[-8:], None)
        now = utcnow() - timedelta(seconds=age_secs)
        build = Build(id=ids.build_id(), namespace_id=ns.id, template_id=template.id, artifact_id=ids.artifact_id(),
                      status="waiting", build_backend="native", source_type="oci_import", tags=["default"],
                      definition={"base_image": "127.0.0.1:1/x:latest"},
                      build_config={"memory_mib": memory_mib} if memory_mib else {}, created_at=now, updated_at=now)
        session.add(build)
        return build.id


def claim(db: Database, *, limit: int | None = None, budget: int | None = None) -> str | None:
    with db.session() as session:
        build = claim_next(session, "host:1:w", 30, postgres=not db.is_sqlite, namespace_limit=limit,
                           memory_budget_mib=budget)  # fmt: skip
        return build.id if build is not None else None


def finish(db: Database, build_id: str) -> None:
    with db.session() as session:
        session.execute(update(Build).where(Build.id == build_id).values(status="success"))


def test_one_worker_takes_the_other_namespace_after_one_slot(db: Database) -> None:
    """Namespace A queues 5 builds before B queues 1; with one worker, B's build is the second to start."""
    busy = [submit(db, "fair-a", age_secs=60 - i) for i in range(5)]
    other = submit(db, "fair-b")
    order = []
    for _ in range(6):
        claimed = claim(db)
        assert claimed is not None
        order.append(claimed)
        finish(db, claimed)
    assert order[0] == busy[0] and order[1] == other
    assert order[2:] == busy[1:] and claim(db) is None


def test_running_builds_count_and_the_namespace_limit_holds(db: Database) -> None:
    busy = [submit(db, "fair-a", age_secs=60 - i) for i in range(3)]
    first = claim(db, limit=1)
    assert first == busy[0]
    assert claim(db, limit=1) is None  # A is at its limit; nobody else waits: A's next build stays queued
    other = submit(db, "fair-b")
    assert claim(db, limit=1) == other  # B starts while A's first build still runs
    assert claim(db, limit=2) == busy[1]  # a higher limit lets A run a second one
    assert claim(db, limit=None) == busy[2]


def test_a_build_that_does_not_fit_the_memory_budget_waits(db: Database) -> None:
    big = submit(db, "fair-a", memory_mib=8192, age_secs=10)
    small = submit(db, "fair-b", memory_mib=256)
    assert claim(db, budget=1024) == small
    assert claim(db, budget=1024) is None
    assert claim(db, budget=None) == big  # a worker with nothing running takes any one build
