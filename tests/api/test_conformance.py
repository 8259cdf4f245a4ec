"""Contract conformance fixes found by the templates-api.md audit (§1-§12, R1-R32): each test pins one gap."""

from __future__ import annotations

import base64
import hashlib

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


def test_build_history_pagination_and_filters(api: Api) -> None:
    """§10.5: newest first, limit/next_cursor paging (no next_cursor on the last page), status/backend/
    source_type filters (R26 includes failed/cancelled attempts), a foreign cursor is a 400 naming it."""
    name = unique("history")
    first = seed_template(api.database_url, "acme", name, ["default"])
    second = seed_template(api.database_url, "acme", name, ["v2"])
    started = api.acme.post("/v1/templates/builds", json={"name": name, "base_image": "127.0.0.1:1/x:latest"})
    assert started.status_code == 202, started.text
    cancelled = started.json()["build_id"]
    assert api.acme.post(f"/v1/templates/builds/{cancelled}/cancel", json={}).status_code == 200
    path = f"/v1/templates/refs/{enc(name)}/builds"
    seen, cursor, pages = [], None, 0
    while True:
        page = api.acme.get(path, params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        pages += 1
        seen += [b["build_id"] for b in page["builds"]]
        cursor = page.get("next_cursor")
        if cursor is None:
            break
        assert isinstance(cursor, str) and len(page["builds"]) == 1
    assert seen == [cancelled, second.build_id, first.build_id] and pages == 3
    assert [b["build_id"] for b in api.acme.get(path).json()["builds"]] == seen
    assert "next_cursor" not in api.acme.get(path, params={"limit": 3}).json()

    def ids(**params: str) -> list[str]:
        resp = api.acme.get(path, params=params)
        assert resp.status_code == 200, resp.text
        return [b["build_id"] for b in resp.json()["builds"]]

    assert ids(status="cancelled") == [cancelled]
    assert ids(status="ready") == [second.build_id, first.build_id]
    assert ids(status="error") == []
    assert ids(backend="buildkit") == [] and ids(backend="native") == seen
    assert ids(source_type="oci_import") == seen and ids(source_type="dockerfile") == []
    assert ids(status="ready", limit="1", cursor=second.build_id) == [first.build_id]
    body = assert_error(api.acme.get(path, params={"cursor": "garbage"}), 400, "invalid_request")
    assert "cursor" in body["error"]
    for params in ({"limit": "0"}, {"status": "done"}, {"backend": "docker"}, {"source_type": "zip"}):
        body = assert_error(api.acme.get(path, params=params), 400, "invalid_request")
        assert next(iter(params)) in body["error"]


def test_promote_errors_name_the_field(api: Api) -> None:
    started = api.acme.post("/v1/templates/builds", json={"name": unique("promo"),
                                                          "base_image": "127.0.0.1:1/x:latest"})
    build_id = started.json()["build_id"]
    body = assert_error(api.acme.post(f"/v1/templates/builds/{build_id}/promote", json={"tag": "bad tag"}), 400,
                        "invalid_request")
    assert body["error"].startswith("tag:")
    body = assert_error(api.acme.post(f"/v1/templates/builds/{build_id}/promote",
                                      json={"tags": ["ok", "bad tag"]}), 400, "invalid_request")
    assert body["error"].startswith("tags[1]:")
    assert_error(api.acme.post(f"/v1/templates/builds/{build_id}/promote", json={"tags": []}), 400,
                 "invalid_request")
    assert_error(api.acme.post(f"/v1/templates/builds/{build_id}/promote", json={"tag": "ok"}), 409, "conflict")
    api.acme.post(f"/v1/templates/builds/{build_id}/cancel", json={})


def test_dockerfile_path_alone_names_the_dockerfile_in_the_context(api: Api) -> None:
    """R30: ``dockerfile_path`` is the Dockerfile's path inside the uploaded context, so it is a source on its
    own (inline or blob-backed context file); a path naming no context file is a 400 naming dockerfile_path."""
    raw = b"FROM 127.0.0.1:1/x:latest\nRUN echo hi\n"
    inline = {"files": [{"path": "sub/Dockerfile", "entry_type": "file",
                         "content_base64": base64.b64encode(raw).decode(), "mode": "0644"}]}
    body = {"name": unique("ctxdf"), "dockerfile_path": "sub/Dockerfile", "build_context": inline}
    plan = api.acme.post("/v1/templates/plan", json=body)
    assert plan.status_code == 200, plan.text
    assert (plan.json()["build_backend"], plan.json()["source_type"]) == ("buildkit", "dockerfile")
    assert plan.json()["build_plan"]["run_steps"] == ["echo hi"]
    assert api.acme.post("/v1/templates/validate", json=body).json() == {"valid": True, "errors": [], "warnings": []}
    missing = {**body, "dockerfile_path": "sub/Nope"}
    body_err = assert_error(api.acme.post("/v1/templates/builds", json=missing), 400, "invalid_request")
    assert body_err["error"].startswith("dockerfile_path:")
    checked = api.acme.post("/v1/templates/validate", json=missing).json()
    assert checked["valid"] is False and checked["errors"][0]["field"] == "dockerfile_path"
    # Blob-backed: the uploaded file is the Dockerfile, and the stored definition keeps the build retryable.
    pre = api.acme.post("/v1/templates/blobs/preflight", json={"files": [
        {"path": "Dockerfile.app", "entry_type": "file", "sha256": hashlib.sha256(raw).hexdigest(),
         "size_bytes": len(raw)}]})
    blob_id = pre.json()["files"][0]["blob_id"]
    assert api.acme.put(f"/v1/templates/blobs/{blob_id}", content=raw).status_code == 204
    body = {"name": unique("blobdf"), "dockerfile_path": "Dockerfile.app",
            "build_context": {"files": [{"path": "Dockerfile.app", "entry_type": "file", "blob_id": blob_id}]}}
    started = api.acme.post("/v1/templates/builds", json=body)
    assert started.status_code == 202, started.text
    assert (started.json()["build_backend"], started.json()["source_type"]) == ("buildkit", "dockerfile")
    build_id = started.json()["build_id"]
    assert api.acme.post(f"/v1/templates/builds/{build_id}/cancel", json={}).status_code == 200
    retried = api.acme.post(f"/v1/templates/builds/{build_id}/retry", json={})
    assert retried.status_code == 202 and retried.json()["source_type"] == "dockerfile"
    assert api.acme.post(f"/v1/templates/builds/{retried.json()['build_id']}/cancel", json={}).status_code == 200


def test_alias_removal_checks_the_namespace(api: Api) -> None:
    old, new = unique("alias-old"), unique("alias-new")
    seed_template(api.database_url, "acme", old, ["default"])
    assert api.acme.post(f"/v1/templates/refs/{enc(old)}/rename", json={"new_name": new}).status_code == 200
    ref = enc(f"acme/{new}")
    assert_error(api.acme.delete(f"/v1/templates/refs/{ref}/aliases/{enc(f'other/{old}')}"), 404, "not_found")
    assert [a["alias_ref"] for a in api.acme.get(f"/v1/templates/refs/{ref}/aliases").json()] == [f"acme/{old}"]
    assert api.acme.delete(f"/v1/templates/refs/{ref}/aliases/{enc(f'acme/{old}:default')}").status_code == 204
    assert api.acme.get(f"/v1/templates/refs/{ref}/aliases").json() == []


def test_bodies_parse_with_the_sdks_generated_models(api: Api) -> None:
    """The generated client's strict ``from_dict`` (not only our own response models) accepts every body."""
    from nullspace._generated_api.nullspace_openapi_client import models as gen

    name = unique("genmodels")
    seeded = seed_template(api.database_url, "acme", name, ["stable"])
    assert api.acme.post(f"/v1/templates/refs/{enc(name)}/rename", json={"new_name": name + "-x"}).status_code == 200
    ref = enc(f"acme/{name}-x")
    info = gen.TemplateInfo.from_dict(api.acme.get(f"/v1/templates/refs/{ref}").json())
    assert (info.id, info.name, info.visibility.value) == (seeded.artifact_id, name + "-x", "private")
    for item in api.acme.get("/v1/templates").json():
        gen.TemplateInfo.from_dict(item)
    for item in api.acme.get(f"/v1/templates/refs/{ref}/tags").json():
        gen.TemplateTagInfo.from_dict(item)
    for item in api.acme.get(f"/v1/templates/refs/{ref}/aliases").json():
        gen.TemplateAliasInfo.from_dict(item)
    gen.TemplateBuildListResponse.from_dict(api.acme.get(f"/v1/templates/refs/{ref}/builds").json())
    gen.TemplateNamespaceInfo.from_dict(api.acme.get("/v1/templates/namespaces/acme").json())
    gen.TemplateNameClaim.from_dict(api.acme.post("/v1/templates/claims", json={"template_ref": name + "-c"}).json())
    gen.TemplateInfo.from_dict(api.acme.post(f"/v1/templates/builds/{seeded.build_id}/promote",
                                             json={"tag": "p"}).json())
    build = api.acme.post("/v1/templates/builds", json={"name": name + "-b", "base_image": "127.0.0.1:1/x:latest"})
    assert gen.TemplateBuild.from_dict(build.json()).status.value == "waiting"
    build_id = build.json()["build_id"]
    gen.TemplateBuildStatusSnapshot.from_dict(api.acme.get(f"/v1/templates/builds/{build_id}").json())
    gen.TemplateBuildStatusSnapshot.from_dict(
        api.acme.post(f"/v1/templates/builds/{build_id}/cancel", json={"reason": "r"}).json())
    retried = api.acme.post(f"/v1/templates/builds/{build_id}/retry", json={}).json()
    gen.TemplateBuild.from_dict(retried)
    gen.TemplateBuildListResponse.from_dict(api.acme.get(f"/v1/templates/refs/{enc(name + '-b')}/builds").json())
    api.acme.post(f"/v1/templates/builds/{retried['build_id']}/cancel", json={})
    plan = {"base_image": "127.0.0.1:1/x:latest", "steps": [{"action": "run", "command": "echo"}], "start_cmd": "x",
            "runtime_config": {"readiness": {"kind": "tcp", "port": 8080}}}
    gen.TemplateBuildPlanResponse.from_dict(api.acme.post("/v1/templates/plan", json=plan).json())
    gen.TemplateBuildValidationResponse.from_dict(api.acme.post("/v1/templates/validate", json={}).json())
    errors = [api.acme.get("/v1/templates/refs/nope-nope"), api.acme.put("/v1/templates/blobs/blob_x", content=b"x"),
              api.other.get(f"/v1/templates/builds/{build_id}"), api.anonymous.get("/v1/templates")]
    codes = [gen.ErrorResponse.from_dict(error.json()).code.value for error in errors]
    assert codes == ["template_not_found", "file_upload_error", "template_build_not_found", "unauthorized"]


def test_slash_ref_reading_ignores_templates_the_caller_cannot_read(api: Api) -> None:
    """R8 reads an un-encoded ``a/b`` as a whole ref only when it names a template *this caller* can read:
    another namespace's private ``other/tags`` neither hijacks acme's ``other`` tag listing nor shows it exists."""
    seed_template(api.database_url, "other", "tags", ["hidden"])
    seed_template(api.database_url, "acme", "other", ["mine"])
    listed = api.acme.get("/v1/templates/refs/other/tags")
    assert listed.status_code == 200, listed.text
    assert [t["tag"] for t in listed.json()] == ["mine"]
    assert api.other.patch(f"/v1/templates/refs/{enc('other/tags')}/visibility",
                           json={"visibility": "public"}).status_code == 200
    try:
        whole = api.acme.get("/v1/templates/refs/other/tags")  # now readable: the whole path is the ref
        assert whole.status_code == 200 and whole.json()["namespace_slug"] == "other", whole.text
        assert api.acme.get("/v1/templates/refs/other/tags/tags").json()[0]["tag"] == "hidden"
    finally:
        api.other.patch(f"/v1/templates/refs/{enc('other/tags')}/visibility", json={"visibility": "private"})


def test_claims_accept_the_namespace_by_slug_or_legacy_uuid(api: Api) -> None:
    """R13: a bare name or ``namespace/name`` of the caller's default namespace (R7's legacy owner UUID too)."""
    from amber.store import keys
    from amber.store.database import Database

    db = Database(api.database_url)
    try:
        with db.session() as session:
            namespace_id = keys.ensure_namespace(session, "acme").id
    finally:
        db.dispose()
    name = unique("uuidclaim")
    resp = api.acme.post("/v1/templates/claims", json={"template_ref": f"{namespace_id}/{name}"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["canonical_ref"] == f"acme/{name}"
    assert api.acme.delete(f"/v1/templates/claims/{resp.json()['claim_token']}").status_code == 204
    body = assert_error(api.acme.post("/v1/templates/claims", json={"template_ref": f"other/{name}"}), 400,
                        "invalid_request")
    assert "template_ref" in body["error"]
