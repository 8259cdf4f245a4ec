"""Contract conformance fixes found by the templates-api.md audit (§1-§12, R1-R32): each test pins one gap."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.api.test_catalog import assert_error, enc, unique
from tests.support.seed import seed_template


def test_id_routes_take_percent_encoded_namespaced_refs(api: Api) -> None:
    """The generated client quotes an {id} with safe="" (§0.6): a namespaced ref arrives as one %2F segment and
    must reach the template, not fall apart into path segments (R9)."""
    name = unique("idref")
    seeded = seed_template(api.database_url, "acme", name, ["stable"])
    ref = enc(f"acme/{name}")
    assert api.acme.get(f"/v1/templates/{enc(f'acme/{name}:stable')}").json()["id"] == seeded.artifact_id
    assert [t["tag"] for t in api.acme.get(f"/v1/templates/{ref}/tags").json()] == ["stable"]
    assert api.acme.get(f"/v1/templates/{ref}/builds").json()["builds"][0]["build_id"] == seeded.build_id
    assert api.acme.post(f"/v1/templates/{ref}/tags", json={"tags": ["x"]}).json()["tags"] == ["stable", "x"]
    assert api.acme.delete(f"/v1/templates/{ref}/tags/x").status_code == 204
    assert api.acme.get(f"/v1/templates/{ref}/aliases").json() == []
    resp = api.acme.patch(f"/v1/templates/{ref}/visibility", json={"visibility": "public"})
    assert resp.status_code == 200 and resp.json()["visibility"] == "public"
    assert api.other.get(f"/v1/templates/{ref}").status_code == 200  # public: readable by another namespace
    assert_error(api.other.delete(f"/v1/templates/{ref}"), 404, "template_not_found")
    assert_error(api.acme.delete(f"/v1/templates/{enc('nullspace/base:latest')}"), 400, "invalid_request")
    assert api.acme.delete(f"/v1/templates/{ref}").status_code == 204
    assert_error(api.acme.get(f"/v1/templates/{ref}"), 404, "template_not_found")
