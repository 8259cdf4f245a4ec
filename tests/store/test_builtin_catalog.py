"""Builtin templates in the catalog on SQLite and PostgreSQL: registration (idempotent, a new artifact replaces
the old, an older one never replaces a newer, hosts registering at once), visibility to every namespace, and
``resolve_launch`` (a bare name: the caller's own template, else the builtin)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from amber.contract.template_refs import parse_ref
from amber.store import catalog, keys
from amber.store.catalog import BuiltinTemplate, Registration
from amber.store.database import Database, migrate
from amber.store.errors import NotFound
from amber.store.models import Artifact, Tag, TagEvent, Template
from tests.support.seed import seed_template

T0 = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[Database]:
    migrate(database_url)
    database = Database(database_url)
    yield database
    database.dispose()


def builtin(name: str, digest: str, built_at: datetime = T0) -> BuiltinTemplate:
    return BuiltinTemplate(
        name=name, description=f"the {name} builtin", artifact_id=f"tmpl_{name.replace('-', '')}_{digest}",
        build_id=f"tb_{name.replace('-', '')}_{digest}", storage_dir=f"/data/builtin/{name}/artifact-{digest}",
        runtime_defaults={"default_env_keys": ["PATH"], "default_user": "root", "default_workdir": "/workspace"},
        size_bytes=1 << 20, built_at=built_at, default_tag="latest", tags=("latest", "default"),
    )  # fmt: skip


def register(db: Database, record: BuiltinTemplate) -> Registration:
    with db.session() as session:
        return catalog.register_builtin(session, record)


def caller(db: Database, slug: str) -> keys.Caller:
    with db.session() as session:
        ns = keys.ensure_namespace(session, slug)
        return keys.Caller(key_id="test", namespace_id=ns.id, namespace_slug=ns.slug)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_registration_is_idempotent_and_visible_to_every_namespace(db: Database) -> None:
    name = unique("base")
    assert register(db, builtin(name, "aaa")) == Registration.CREATED
    with db.read_session() as session:
        events = session.scalar(select(func.count()).select_from(TagEvent))
    assert register(db, builtin(name, "aaa")) == Registration.UNCHANGED
    with db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(TagEvent)) == events  # nothing written
    for slug in ("acme", "other"):
        who = caller(db, slug)
        with db.read_session() as session:
            listed = {r.template.name: r for r in catalog.list_templates(session, who)}
            assert listed[name].namespace.kind == "system" and listed[name].template.visibility == "public"
            artifact = listed[name].artifact
            assert artifact is not None and artifact.id == builtin(name, "aaa").artifact_id
            for text in (f"nullspace/{name}", f"nullspace/{name}:latest", f"nullspace/{name}:default"):
                resolved = catalog.resolve(session, who, parse_ref(text))
                assert resolved.artifact is not None and resolved.artifact.storage_dir.endswith("artifact-aaa")
            with pytest.raises(NotFound):  # only the system namespace may change it
                catalog.resolve(session, who, parse_ref(f"nullspace/{name}"), write=True)


def test_a_new_artifact_replaces_the_old_one(db: Database) -> None:
    name = unique("base")
    register(db, builtin(name, "old"))
    newer = builtin(name, "new", T0 + timedelta(hours=1))
    assert register(db, newer) == Registration.UPDATED
    assert register(db, newer) == Registration.UNCHANGED
    with db.read_session() as session:
        template = session.scalar(select(Template).where(Template.name == name))
        assert template is not None and template.default_tag == "latest"
        artifacts = session.scalars(select(Artifact.id).where(Artifact.template_id == template.id)).all()
        assert artifacts == [newer.artifact_id]
        tags = session.scalars(select(Tag).where(Tag.template_id == template.id)).all()
        assert {t.tag: t.artifact_id for t in tags} == {"latest": newer.artifact_id, "default": newer.artifact_id}
    moved = builtin(name, "new", T0 + timedelta(hours=1))
    moved = BuiltinTemplate(**{**moved.__dict__, "storage_dir": "/elsewhere", "tags": ("latest",)})
    assert register(db, moved) == Registration.UPDATED
    with db.read_session() as session:
        artifact = session.get(Artifact, newer.artifact_id)
        assert artifact is not None and artifact.storage_dir == "/elsewhere"
        assert catalog.artifact_tags(session, artifact.id) == ["latest"]


def test_an_older_artifact_never_replaces_a_newer_one(db: Database) -> None:
    name = unique("base")
    register(db, builtin(name, "new", T0 + timedelta(hours=1)))
    assert register(db, builtin(name, "old", T0)) == Registration.KEPT_NEWER
    with db.read_session() as session:
        resolved = catalog.resolve(session, caller(db, "acme"), parse_ref(f"nullspace/{name}:latest"))
        assert resolved.artifact is not None and resolved.artifact.id.endswith("_new")
        assert session.get(Artifact, builtin(name, "old").artifact_id) is None


def test_hosts_registering_at_once(db: Database) -> None:
    name = unique("base")
    record = builtin(name, "same")
    outcomes: list[Registration] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def host() -> None:
        start.wait()
        try:
            outcomes.append(register(db, record))
        except BaseException as exc:  # reported below: a failed registration fails the test
            errors.append(exc)

    threads = [threading.Thread(target=host) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(outcomes) == sorted([Registration.CREATED] + [Registration.UNCHANGED] * 3)
    with db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Template).where(Template.name == name)) == 1


def test_resolve_launch_falls_back_to_the_builtin(db: Database, database_url: str) -> None:
    name = unique("base")
    register(db, builtin(name, "b1"))
    acme, other = caller(db, "acme"), caller(db, "other")
    with db.read_session() as session:
        for text in (name, f"{name}:latest", f"nullspace/{name}", f"nullspace/{name}:default"):
            resolved = catalog.resolve_launch(session, acme, parse_ref(text))
            assert resolved.namespace.slug == "nullspace" and resolved.artifact is not None
        with pytest.raises(NotFound) as missing:
            catalog.resolve_launch(session, acme, parse_ref(f"{name}:nope"))
        assert f"{name}:nope" in missing.value.message
        with pytest.raises(NotFound):  # a namespaced ref never falls back
            catalog.resolve_launch(session, acme, parse_ref(f"acme/{name}"))
        with pytest.raises(NotFound):
            catalog.resolve_launch(session, acme, parse_ref(unique("nothing")))
    own = seed_template(database_url, "acme", name, ["latest"])
    with db.read_session() as session:
        mine = catalog.resolve_launch(session, acme, parse_ref(name))
        assert mine.namespace.slug == "acme" and mine.artifact is not None and mine.artifact.id == own.artifact_id
        assert catalog.resolve_launch(session, acme, parse_ref(f"{name}:latest")).namespace.slug == "acme"
        assert catalog.resolve_launch(session, acme, parse_ref(f"nullspace/{name}")).namespace.slug == "nullspace"
        assert catalog.resolve_launch(session, other, parse_ref(name)).namespace.slug == "nullspace"
        by_id = catalog.resolve_launch(session, acme, parse_ref(own.artifact_id))
        assert by_id.artifact is not None and by_id.artifact.id == own.artifact_id


def test_resolve_launch_skips_an_own_template_without_artifact(db: Database) -> None:
    name = unique("base")
    register(db, builtin(name, "b2"))
    acme = caller(db, "acme")
    with db.session() as session:
        catalog.build_target(session, acme, name, None)  # a first build accepted: the template has no artifact
    with db.read_session() as session:
        resolved = catalog.resolve_launch(session, acme, parse_ref(name))
        assert resolved.namespace.slug == "nullspace" and resolved.artifact is not None
    lonely = unique("lonely")
    with db.session() as session:
        catalog.build_target(session, acme, lonely, None)
    with db.read_session() as session:
        pending = catalog.resolve_launch(session, acme, parse_ref(lonely))
        assert pending.namespace.slug == "acme" and pending.artifact is None
