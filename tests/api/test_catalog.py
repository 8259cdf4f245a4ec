"""Template management endpoints (#13-#36) over HTTP: refs in every form (R7), raw-path routing (§0.6, §11,
R8), caller scoping, tags (R4, R27), aliases and rename (R5, R6), visibility (R12), fields (R11), claims (R13),
namespaces (R14), deletion (R10)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import httpx

from tests.api.conftest import Api
from tests.support.seed import seed_template


def enc(ref: str) -> str:
    return quote(ref, safe="")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    assert body["request_id"] == resp.headers["x-request-id"]
    return body


def test_get_by_every_ref_form(api: Api) -> None:
    name = unique("app")
    seeded = seed_template(api.database_url, "acme", name, ["stable", "default"])
    namespace_id = api.acme.get("/v1/templates/namespaces/acme").json()  # exists
    assert namespace_id["is_default"] is True
    for ref in (f"acme/{name}:stable", seeded.artifact_id, name, f"{name}:stable", f"{name}:{seeded.build_id}",
                f"acme/{name}", f"acme/{name}:{seeded.build_id}"):
        resp = api.acme.get(f"/v1/templates/refs/{enc(ref)}")
        assert resp.status_code == 200, (ref, resp.text)
        info = resp.json()
        assert info["id"] == seeded.artifact_id
        assert info["name"] == name
        assert info["namespace_slug"] == "acme"
        assert info["visibility"] == "private"
        assert info["builtin"] is False
        assert set(info["tags"]) == {"stable", "default"}
        assert info["canonical_ref"].startswith(f"acme/{name}:")
        assert info["runtime_defaults"] == {"default_env_keys": ["A"], "start_cmd": "sleep 1"}
    assert api.acme.get(f"/v1/templates/refs/{enc(f'acme/{name}:stable')}").json()["canonical_ref"] == (
        f"acme/{name}:stable"
    )
    # The {id} form takes raw ids and unnamespaced refs (R9).
    assert api.acme.get(f"/v1/templates/{seeded.artifact_id}").json()["name"] == name
    assert api.acme.get(f"/v1/templates/{name}:stable").json()["id"] == seeded.artifact_id


def test_unknown_and_malformed_refs(api: Api) -> None:
    assert_error(api.acme.get(f"/v1/templates/refs/{enc('acme/does-not-exist:stable')}"), 404, "template_not_found")
    assert_error(api.acme.get("/v1/templates/refs/tmpl_nope"), 404, "template_not_found")
    assert_error(api.acme.get(f"/v1/templates/refs/{enc('nosuchns/x')}"), 404, "template_not_found")
    body = assert_error(api.acme.get(f"/v1/templates/refs/{enc('a/b/c')}"), 400, "invalid_request")
    assert "a/b/c" in body["error"]
    assert_error(api.acme.get(f"/v1/templates/refs/{enc('bad name')}"), 400, "invalid_request")
    name = unique("app")
    seed_template(api.database_url, "acme", name, ["default"])
    assert_error(api.acme.get(f"/v1/templates/refs/{enc(name + ':nope')}"), 404, "template_not_found")


def test_other_callers_private_templates_are_not_found(api: Api) -> None:
    name = unique("secret")
    seeded = seed_template(api.database_url, "acme", name, ["default"])
    for path in (f"/v1/templates/refs/{enc('acme/' + name)}", f"/v1/templates/{seeded.artifact_id}",
                 f"/v1/templates/refs/{enc('acme/' + name)}/tags", f"/v1/templates/refs/{enc('acme/' + name)}/builds",
                 f"/v1/templates/refs/{enc('acme/' + name)}/aliases"):
        assert_error(api.other.get(path), 404, "template_not_found")
    assert_error(api.other.delete(f"/v1/templates/refs/{enc('acme/' + name)}"), 404, "template_not_found")
    assert all(t["name"] != name for t in api.other.get("/v1/templates").json())
    # Same namespace, different key: same caller.
    assert api.acme2.get(f"/v1/templates/refs/{enc('acme/' + name)}").status_code == 200


def test_public_templates_are_readable_but_not_writable_by_others(api: Api) -> None:
    name = unique("shared")
    seed_template(api.database_url, "acme", name, ["default"])
    resp = api.acme.patch(f"/v1/templates/refs/{enc('acme/' + name)}/visibility", json={"visibility": "public"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["visibility"] == "public"
    ref = enc(f"acme/{name}")
    assert api.other.get(f"/v1/templates/refs/{ref}").json()["visibility"] == "public"
    assert any(t["name"] == name for t in api.other.get("/v1/templates").json())
    assert_error(api.other.post(f"/v1/templates/refs/{ref}/tags", json={"tags": ["x"]}), 404, "template_not_found")
    assert_error(api.other.patch(f"/v1/templates/refs/{ref}/visibility", json={"visibility": "private"}), 404,
                 "template_not_found")
    assert_error(api.other.get(f"/v1/templates/refs/{ref}/builds"), 404, "template_not_found")
    assert_error(api.acme.patch(f"/v1/templates/refs/{ref}/visibility", json={"visibility": "secret"}), 400,
                 "invalid_request")
    assert api.acme.patch(f"/v1/templates/refs/{ref}/visibility", json={"visibility": "private"}).status_code == 200
    assert_error(api.other.get(f"/v1/templates/refs/{ref}"), 404, "template_not_found")


def test_fields_mask(api: Api) -> None:
    name = unique("fields")
    seed_template(api.database_url, "acme", name, ["default"])
    one = api.acme.get(f"/v1/templates/refs/{enc(name)}", params={"fields": "id,canonical_ref,id"}).json()
    assert set(one) == {"id", "canonical_ref"}
    listed = api.acme.get("/v1/templates", params={"fields": "name,visibility"}).json()
    assert isinstance(listed, list) and listed
    assert all(set(item) == {"name", "visibility"} for item in listed)
    body = assert_error(api.acme.get("/v1/templates", params={"fields": "name,secret_sauce"}), 400, "invalid_fields")
    assert "secret_sauce" in body["error"]


def test_tags_assign_list_move_remove(api: Api) -> None:
    name = unique("tags")
    first = seed_template(api.database_url, "acme", name, ["default"])
    second = seed_template(api.database_url, "acme", name, ["v2"])
    ref = enc(f"acme/{name}")
    assert_error(api.acme.post(f"/v1/templates/refs/{ref}/tags", json={"tags": []}), 400, "invalid_request")
    body = assert_error(api.acme.post(f"/v1/templates/refs/{ref}/tags", json={"tags": ["ok", "bad tag"]}), 400,
                        "invalid_request")
    assert "tags[1]" in body["error"]
    assert_error(api.acme.post(f"/v1/templates/refs/{ref}/tags", json={}), 400, "invalid_request")
    # Assign "stable" onto the artifact of :v2, then move it back to the first artifact through the {id} form.
    info = api.acme.post(f"/v1/templates/refs/{enc(f'acme/{name}:v2')}/tags", json={"tags": ["stable"]}).json()
    assert info["id"] == second.artifact_id and set(info["tags"]) == {"v2", "stable"}
    tags = api.acme.get(f"/v1/templates/refs/{ref}/tags").json()
    assert {t["tag"]: t["build_id"] for t in tags} == {
        "default": first.build_id, "v2": second.build_id, "stable": second.build_id}
    assert all(isinstance(t["created_at"], str) and t["created_at"].endswith("Z") for t in tags)
    moved = api.acme.post(f"/v1/templates/{first.artifact_id}/tags", json={"tags": ["stable"]}).json()
    assert moved["id"] == first.artifact_id
    assert api.acme.get(f"/v1/templates/refs/{enc(f'{name}:stable')}").json()["id"] == first.artifact_id
    assert api.acme.delete(f"/v1/templates/refs/{ref}/tags/stable").status_code == 204
    assert_error(api.acme.get(f"/v1/templates/refs/{enc(f'{name}:stable')}"), 404, "template_not_found")
    assert_error(api.acme.delete(f"/v1/templates/refs/{ref}/tags/stable"), 404, "not_found")
    assert api.acme.delete(f"/v1/templates/{name}/tags/v2").status_code == 204
    assert [t["tag"] for t in api.acme.get(f"/v1/templates/{name}/tags").json()] == ["default"]


def test_builtin_refs_are_protected(api: Api) -> None:
    assert_error(api.acme.get(f"/v1/templates/refs/{enc('nullspace/base:latest')}/tags"), 400, "invalid_request")
    assert_error(api.acme.delete(f"/v1/templates/refs/{enc('nullspace/base:latest')}"), 400, "invalid_request")
    assert_error(api.acme.get(f"/v1/templates/refs/{enc('nullspace/base:latest')}"), 404, "template_not_found")


def test_rename_keeps_old_name_as_alias(api: Api) -> None:
    old, new = unique("old"), unique("new")
    seeded = seed_template(api.database_url, "acme", old, ["default"])
    taken = unique("taken")
    seed_template(api.database_url, "acme", taken, ["default"])
    ref = enc(f"acme/{old}")
    assert_error(api.acme.post(f"/v1/templates/refs/{ref}/rename", json={"new_name": taken}), 409, "conflict")
    body = assert_error(api.acme.post(f"/v1/templates/refs/{ref}/rename", json={"new_name": "a/b"}), 400,
                        "invalid_request")
    assert "new_name" in body["error"]
    info = api.acme.post(f"/v1/templates/refs/{ref}/rename", json={"new_name": new}).json()
    assert info["name"] == new and info["id"] == seeded.artifact_id
    assert info["canonical_ref"].startswith(f"acme/{new}:")
    # The old name still resolves (alias), and is listed as an alias.
    assert api.acme.get(f"/v1/templates/refs/{enc(f'acme/{old}')}").json()["name"] == new
    aliases = api.acme.get(f"/v1/templates/refs/{enc(f'acme/{new}')}/aliases").json()
    assert [a["alias_ref"] for a in aliases] == [f"acme/{old}"]
    assert aliases[0]["created_at"].endswith("Z")
    # Renaming again keeps the first alias (R5) and adds the second.
    third = unique("third")
    assert api.acme.post(f"/v1/templates/{new}/rename", json={"new_name": third}).status_code == 200
    aliases = [a["alias_ref"] for a in api.acme.get(f"/v1/templates/{third}/aliases").json()]
    assert aliases == [f"acme/{old}", f"acme/{new}"]
    # A build may not take an alias name; the alias can be removed, freeing it.
    assert_error(api.acme.delete(f"/v1/templates/refs/{enc(f'acme/{third}')}/aliases/nope"), 404, "not_found")
    assert api.acme.delete(f"/v1/templates/refs/{enc(f'acme/{third}')}/aliases/{enc(f'acme/{old}')}"
                           ).status_code == 204
    assert api.acme.delete(f"/v1/templates/{third}/aliases/{new}").status_code == 204
    assert api.acme.get(f"/v1/templates/{third}/aliases").json() == []
    assert_error(api.acme.get(f"/v1/templates/refs/{enc(old)}"), 404, "template_not_found")


def test_raw_path_routing_of_slash_refs(api: Api) -> None:
    """R8: un-encoded slash refs; a template named like a sub-resource keeps its sub-resource one level deeper."""
    name = unique("raw")
    seed_template(api.database_url, "acme", name, ["stable"])
    assert api.acme.get(f"/v1/templates/refs/acme/{name}:stable").json()["name"] == name
    assert [t["tag"] for t in api.acme.get(f"/v1/templates/refs/acme/{name}/tags").json()] == ["stable"]
    seed_template(api.database_url, "acme", "tags", ["t1"])
    whole = api.acme.get("/v1/templates/refs/acme/tags")
    assert whole.status_code == 200 and whole.json()["name"] == "tags"
    deeper = api.acme.get("/v1/templates/refs/acme/tags/tags")
    assert deeper.status_code == 200 and [t["tag"] for t in deeper.json()] == ["t1"]
    # Percent-encoded '/' never splits a path (§0.6): this is one segment naming one ref.
    assert api.acme.get(f"/v1/templates/refs/{enc('acme/tags')}/tags").json()[0]["tag"] == "t1"


def test_list_templates(api: Api) -> None:
    name = unique("listed")
    seed_template(api.database_url, "acme", name, ["default"])
    listed = api.acme.get("/v1/templates").json()
    mine = [t for t in listed if t["name"] == name]
    assert len(mine) == 1
    assert {"id", "name", "description", "builtin", "canonical_ref", "namespace_slug", "visibility"} <= set(mine[0])


def test_claims(api: Api) -> None:
    name = unique("claimed")
    resp = api.acme.post("/v1/templates/claims", json={"template_ref": name})
    assert resp.status_code == 201, resp.text
    claim = resp.json()
    assert claim["canonical_ref"] == f"acme/{name}" and claim["expires_at"].endswith("Z")
    assert_error(api.acme.post("/v1/templates/claims", json={"template_ref": f"acme/{name}"}), 409, "conflict")
    assert_error(api.acme.post("/v1/templates/claims", json={"template_ref": f"other/{name}"}), 400,
                 "invalid_request")
    assert_error(api.acme.post("/v1/templates/claims", json={"template_ref": "bad name"}), 400, "invalid_request")
    assert_error(api.acme.post("/v1/templates/claims", json={}), 400, "invalid_request")
    # A build under the claimed name without its token is refused; with it, it consumes the claim.
    request = {"name": name, "base_image": "127.0.0.1:1/x:latest"}
    assert_error(api.acme.post("/v1/templates/builds", json=request), 409, "conflict")
    assert_error(api.other.delete(f"/v1/templates/claims/{claim['claim_token']}"), 404,
                 "template_name_claim_not_found")
    started = api.acme.post("/v1/templates/builds", json={**request, "claim_token": claim["claim_token"]})
    assert started.status_code == 202, started.text
    assert started.json()["name"] == name
    assert_error(api.acme.delete(f"/v1/templates/claims/{claim['claim_token']}"), 409, "conflict")
    api.acme.post(f"/v1/templates/builds/{started.json()['build_id']}/cancel", json={})
    # Existing names cannot be claimed; released claims free the name.
    assert_error(api.acme.post("/v1/templates/claims", json={"template_ref": name}), 409, "conflict")
    other_name = unique("free")
    token = api.acme.post("/v1/templates/claims", json={"template_ref": other_name}).json()["claim_token"]
    assert api.acme.delete(f"/v1/templates/claims/{token}").status_code == 204
    assert_error(api.acme.delete(f"/v1/templates/claims/{token}"), 404, "template_name_claim_not_found")
    assert api.acme.post("/v1/templates/claims", json={"template_ref": other_name}).status_code == 201


def test_namespaces(api: Api) -> None:
    assert api.acme.get("/v1/templates/namespaces/acme").json() == {"slug": "acme", "kind": "user",
                                                                     "is_default": True}
    assert api.acme.get("/v1/templates/namespaces/nullspace").json() == {"slug": "nullspace", "kind": "system",
                                                                          "is_default": False}
    assert_error(api.acme.get("/v1/templates/namespaces/other"), 404, "not_found")
    assert_error(api.acme.get("/v1/templates/namespaces/nope"), 404, "not_found")


def test_delete_by_tag_then_by_name(api: Api) -> None:
    name = unique("gone")
    first = seed_template(api.database_url, "acme", name, ["default"])
    seed_template(api.database_url, "acme", name, ["v2"])
    assert api.acme.delete(f"/v1/templates/refs/{enc(f'acme/{name}:v2')}").status_code == 204
    assert_error(api.acme.get(f"/v1/templates/refs/{enc(f'{name}:v2')}"), 404, "template_not_found")
    assert api.acme.get(f"/v1/templates/refs/{enc(name)}").json()["id"] == first.artifact_id
    assert api.acme.delete(f"/v1/templates/{name}").status_code == 204
    assert_error(api.acme.get(f"/v1/templates/refs/{enc(name)}"), 404, "template_not_found")
    assert_error(api.acme.get(f"/v1/templates/refs/{enc(name)}/builds"), 404, "template_not_found")
    assert_error(api.acme.delete(f"/v1/templates/{name}"), 404, "template_not_found")
