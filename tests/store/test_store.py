"""The store on SQLite and PostgreSQL: migrations, hashed keys, the queue's claims and leases, gap-free log
offsets under concurrency, nothing after a terminal entry, tag history, and recovery of builds left by a dead
server (``interrupted``) while resumable queued builds stay queued."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from amber.blobs.store import BlobStore
from amber.builds.logbus import LogBus
from amber.builds.planning import make_plan
from amber.builds.queue import WorkerIdentity
from amber.builds.service import BuildService
from amber.builds.service.accept import stored_plan
from amber.contract.errors import InvalidRequest
from amber.contract.logs import LogEvent, LogKind, LogPhase
from amber.contract.validation import request_from_definition, validate_create_request
from amber.settings import Settings
from amber.store import catalog, ids, keys
from amber.store.builds import claim_next, renew_lease
from amber.store.database import Database, migrate
from amber.store.errors import Invalid
from amber.store.models import ApiKey, Build, BuildLogEntry, TagEvent, Template, utcnow
from tests.support.seed import seed_template


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[Database]:
    migrate(database_url)
    database = Database(database_url)
    yield database
    database.dispose()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def new_build(db: Database, *, status: str = "waiting", pinned: str | None = None, owner: str | None = None,
              lease_secs: float = 30.0) -> str:
    with db.session() as session:
        ns = keys.ensure_namespace(session, "store-tests")
        caller = keys.Caller(key_id="k", namespace_id=ns.id, namespace_slug=ns.slug)
        template = catalog.build_target(session, caller, "queue-" + ids.build_id()[-8:], None)
        now = utcnow()
        build = Build(id=ids.build_id(), namespace_id=ns.id, template_id=template.id, artifact_id=ids.artifact_id(),
                      status=status, build_backend="native", source_type="oci_import", tags=["default"],
                      definition={"base_image": "127.0.0.1:1/x:latest"}, pinned_worker=pinned, lease_owner=owner,
                      lease_expires_at=now + timedelta(seconds=lease_secs) if owner else None,
                      created_at=now, updated_at=now)
        session.add(build)
        return build.id


def service_for(db: Database, tmp_path: Path) -> BuildService:
    return BuildService(db, Settings(data_dir=tmp_path), LogBus(), BlobStore(tmp_path / "blobs"))


def test_migrations_are_idempotent(db: Database, database_url: str) -> None:
    migrate(database_url)
    tables = set(inspect(db.engine).get_table_names())
    assert {"namespaces", "api_keys", "templates", "artifacts", "builds", "build_log_entries", "tags", "tag_events",
            "aliases", "name_claims", "blobs", "alembic_version"} <= tables
    with db.session() as session:
        system = catalog.namespace_by_ref(session, "nullspace")
        assert system is not None and system.kind == "system"


def test_keys_are_stored_hashed(db: Database) -> None:
    with db.session() as session:
        key = keys.create_api_key(session, "hashed-ns")
    with db.session() as session:
        hashes = list(session.scalars(select(ApiKey.key_hash)))
        caller = keys.caller_for_key(session, key)
        assert keys.caller_for_key(session, key + "x") is None
    assert key not in hashes and keys.hash_key(key) in hashes
    assert caller is not None and caller.namespace_slug == "hashed-ns"
    with pytest.raises(Invalid), db.session() as session:
        keys.create_api_key(session, "nullspace")


def test_claims_are_exclusive_across_threads(db: Database) -> None:
    ids_ = [new_build(db) for _ in range(6)]
    claimed: list[str] = []
    lock = threading.Lock()
    postgres = not db.is_sqlite

    def worker(name: str) -> None:
        while True:
            with db.session() as session:
                build = claim_next(session, name, 30, postgres=postgres)
                if build is None:
                    return
                with lock:
                    claimed.append(build.id)

    threads = [threading.Thread(target=worker, args=(f"h:{i}:n",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mine = [c for c in claimed if c in ids_]
    assert sorted(mine) == sorted(ids_)  # every build claimed exactly once
    with db.session() as session:
        assert {b.status for b in session.scalars(select(Build).where(Build.id.in_(ids_)))} == {"building"}


def test_pinned_builds_are_claimed_only_by_their_process(db: Database) -> None:
    me = "host:1:aaaa"
    pinned = new_build(db, pinned=me)
    with db.session() as session:
        other = claim_next(session, "host:2:bbbb", 30, postgres=not db.is_sqlite)
        assert other is None or other.id != pinned
    with db.session() as session:
        while (build := claim_next(session, me, 30, postgres=not db.is_sqlite)) is not None:
            if build.id == pinned:
                break
        assert build is not None and build.id == pinned
    with db.session() as session:
        status, cancel_at = renew_lease(session, pinned, me, 30)
    assert status == "building" and cancel_at is None


def test_log_offsets_are_gap_free_and_stop_at_the_terminal_entry(db: Database, tmp_path: Path) -> None:
    build_id = new_build(db, status="building")
    service = service_for(db, tmp_path)

    async def scenario() -> list[bool]:
        events = [LogEvent(kind=LogKind.MESSAGE, message=f"line {i}", phase=LogPhase.STEP, step_index=1)
                  for i in range(20)]
        written = await asyncio.gather(*(service.emit(build_id, e, attempt=1) for e in events))
        await service.fail(build_id, code="build_error", message="step 1 failed: exit 1", phase="build_step",
                           reason="step_failed", step_index=1)
        written.append(await service.emit(build_id, LogEvent(kind=LogKind.MESSAGE, message="late"), attempt=1))
        return written

    written = asyncio.run(scenario())
    assert written[:20] == [True] * 20 and written[20] is False
    with db.session() as session:
        rows = session.execute(select(BuildLogEntry.offset, BuildLogEntry.entry_json)
                               .where(BuildLogEntry.build_id == build_id).order_by(BuildLogEntry.offset)).all()
        build = session.get(Build, build_id)
        assert build is not None
        assert build.status == "error" and build.failure_phase == "build_step"
        assert build.error_detail is not None and build.error_detail["step_index"] == 1
    assert [r[0] for r in rows] == list(range(21))
    last = json.loads(rows[-1][1])
    assert last["kind"] == "error" and last["error_detail"]["phase"] == "build_step"
    assert last["error_detail"]["details"] == {"reason": "step_failed"}
    assert all(json.loads(r[1])["offset"] == r[0] for r in rows)


def test_recovery_ends_orphans_and_keeps_resumable_builds(db: Database, tmp_path: Path) -> None:
    me = WorkerIdentity.current()
    gone = f"{me.host}:{dead_pid()}:dead"
    running = new_build(db, status="building", owner=gone)
    stranded = new_build(db, pinned=gone)
    resumable = new_build(db)
    expired = new_build(db, status="building", owner="elsewhere:1:x", lease_secs=-5)
    service = service_for(db, tmp_path)
    ended = asyncio.run(service.recover())
    assert {running, stranded, expired} <= set(ended) and resumable not in ended
    with db.session() as session:
        for build_id in (running, stranded, expired):
            build = session.get(Build, build_id)
            assert build is not None and build.status == "error" and build.failure_phase == "interrupted"
            assert build.error_detail is not None and build.error_detail["retryable"] is True
            assert "interrupted" in (build.error or "")
        queued = session.get(Build, resumable)
        assert queued is not None and queued.status == "waiting"


def test_tag_moves_are_recorded(db: Database, database_url: str) -> None:
    first = seed_template(database_url, "history", "app", ["stable"])
    second = seed_template(database_url, "history", "app", ["stable"])
    with db.session() as session:
        template = session.get(Template, first.template_id)
        assert template is not None
        events = session.scalars(select(TagEvent).where(TagEvent.template_id == template.id)
                                 .order_by(TagEvent.id)).all()
        assert [(e.tag, e.action, e.build_id) for e in events] == [
            ("stable", "assign", first.build_id), ("stable", "assign", second.build_id)]
        tags = catalog.list_tags(session, template)
        assert [(t["tag"], t["build_id"]) for t in tags] == [("stable", second.build_id)]


def test_a_build_executes_the_plan_stored_at_accept(db: Database, tmp_path: Path) -> None:
    """Accept stores the plan; the worker's ``stored_plan`` reads back exactly that plan. A build accepted before
    plans were stored is planned from its definition; a plan that does not read back is refused."""
    service = service_for(db, tmp_path)
    with db.session() as session:
        ns = keys.ensure_namespace(session, "store-tests")
        caller = keys.Caller(key_id="k", namespace_id=ns.id, namespace_slug=ns.slug)
    req = validate_create_request({"name": "planned-" + ids.build_id()[-8:], "base_image": "127.0.0.1:1/x:latest",
                                   "steps": [{"action": "workdir", "path": "/srv"}], "start_cmd": "srv"})  # fmt: skip
    view = asyncio.run(service.accept(caller, req, request_id="r"))
    legacy_id = new_build(db)
    with db.session() as session:
        accepted = session.get(Build, view["build_id"])
        assert accepted is not None and accepted.plan is not None
        assert stored_plan(session, accepted) == make_plan(req)
        legacy = session.get(Build, legacy_id)
        assert legacy is not None and legacy.plan is None
        assert stored_plan(session, legacy) == make_plan(request_from_definition(legacy.definition))
        accepted.plan = {"format": 0}
        with pytest.raises(InvalidRequest, match="stored build plan"):
            stored_plan(session, accepted)
        session.rollback()
    asyncio.run(service.cancel(caller, view["build_id"], "test over"))
