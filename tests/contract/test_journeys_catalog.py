"""Catalog journeys through the unmodified SDK (and the generated client's raw routes where the SDK has no call):
names a template may not take, alias removal on the ``{id}`` route with a listed ``namespace/name`` alias,
namespace metadata seen by a second key, and a base template deleted under the templates built on it.
One SQLite server for the module; two builds shared by every test."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
from nullspace import MachineError, NotFoundError, Template, TemplateAliasInfo, TemplateBuild, TemplateInfo

from tests.contract.conftest import Conn, Sdk, unique

# One SQLite server for the module (the PostgreSQL variant of the shared flows runs in test_sdk.py).
pytestmark = [pytest.mark.vm, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True, scope="module")]


def rename(ref: str, new_name: str, conn: Conn) -> TemplateInfo:
    """``Template.rename`` called on the class with a ref, as the SDK documents (its annotation says otherwise)."""
    info = cast(Any, Template).rename(ref, new_name, **conn)
    assert isinstance(info, TemplateInfo)
    return info


def alias_refs(ref: str, conn: Conn) -> list[str]:
    return [a.alias_ref for a in cast(list[TemplateAliasInfo], Template.list_aliases(ref, **conn))]


@pytest.fixture(scope="module")
def base(sdk: Sdk) -> Iterator[TemplateBuild]:
    """acme's template, built once: ``marker`` holds its name so a child build can read it."""
    name = unique("base")
    build = Template.build(Template.from_image(sdk.base_image).run_cmd(f"echo {name} > /marker"), f"{name}:v1",
                           **sdk.acme)
    yield build
    build.close()


def test_reserved_names_are_refused_by_rename_and_claims(sdk: Sdk, base: TemplateBuild) -> None:
    """A build may not be named ``tmpl_…``/``tb_…``; neither may a rename or a claim (a ``tmpl_…`` name would read
    as an artifact id and the template could never be found by name again)."""
    for reserved in ("tmpl_lookalike", "tb_lookalike"):
        with pytest.raises(MachineError) as renamed:
            rename(f"acme/{base.name}", reserved, sdk.acme)
        assert renamed.value.code == "invalid_request" and "reserved" in str(renamed.value)
        with pytest.raises(MachineError) as claimed:
            Template.reserve_name(reserved, **sdk.acme)
        assert claimed.value.code == "invalid_request"
    assert Template.get(f"{base.name}:v1", fields=["name"], **sdk.acme) == {"name": base.name}


def test_alias_removal_on_the_id_route_takes_the_listed_alias(sdk: Sdk, base: TemplateBuild) -> None:
    """``remove_template_alias`` (generated client, #25) percent-encodes the alias as listed (``acme/old``)."""
    old = base.name
    new = unique("renamed")
    rename(old, new, sdk.acme)
    assert alias_refs(new, sdk.acme) == [f"acme/{old}"]
    with httpx.Client(base_url=sdk.server.url, headers={"Authorization": f"Bearer {sdk.acme_key}"}) as client:
        removed = client.delete(f"/v1/templates/{base.template_id}/aliases/acme%2F{old}")
    assert removed.status_code == 204, removed.text
    assert alias_refs(new, sdk.acme) == []
    rename(new, old, sdk.acme)
    assert alias_refs(old, sdk.acme) == [f"acme/{new}"]
    Template.remove_alias(old, f"acme/{new}", **sdk.acme)


def test_namespace_of_a_public_template_is_visible_to_another_key(sdk: Sdk, base: TemplateBuild) -> None:
    """Another key sees a public template's ``namespace_slug``; that namespace's metadata is then readable too
    (not its default). A namespace with only private templates stays hidden."""
    with pytest.raises(NotFoundError):
        Template.get_namespace("acme", **sdk.other)
    Template.set_visibility(f"acme/{base.name}", "public", **sdk.acme)
    try:
        seen = Template.get(f"acme/{base.name}:v1", **sdk.other)
        assert isinstance(seen, TemplateInfo)
        assert seen.namespace_slug == "acme"
        namespace = Template.get_namespace(seen.namespace_slug, **sdk.other)
        assert namespace.slug == "acme" and namespace.is_default is False and namespace.kind.value == "user"
        assert Template.get_namespace("other", **sdk.other).is_default is True
    finally:
        Template.set_visibility(f"acme/{base.name}", "private", **sdk.acme)
    with pytest.raises(NotFoundError):
        Template.get_namespace("acme", **sdk.other)


def test_legacy_owner_uuid_refs_in_either_case(sdk: Sdk, base: TemplateBuild, database_url: str) -> None:
    """R7's legacy ``<owner-uuid>/name:tag`` refs and claims: a UUID is the same in upper case."""
    with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
        owner = db.execute("SELECT id FROM namespaces WHERE slug = 'acme'").fetchone()[0]
    for form in (owner, owner.upper()):
        assert Template.get(f"{form}/{base.name}:v1", fields=["id"], **sdk.acme) == {"id": base.template_id}
    claim = Template.reserve_name(f"{owner.upper()}/{unique('uuid-claim')}", **sdk.acme)
    assert claim.canonical_ref.startswith("acme/")
    Template.release_name_claim(claim.claim_token, **sdk.acme)
