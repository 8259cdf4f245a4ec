"""Blob preflight and upload (#11, #12; R47, R50-R52, C8-C11), authentication (§0.2), error bodies and request
ids (§0.7, C12), and the OpenAPI document (36 operations)."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.api.conftest import Api
from tests.api.test_builds import BASE
from tests.api.test_catalog import assert_error, unique

TEMPLATE_FAILURE_KEYS = {"code", "message", "phase", "retryable", "suggested_action", "step_index", "attempt",
                         "max_attempts", "cache_subject", "build_id", "request_id", "details"}


def descriptor(path: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"path": path, "entry_type": "file", "mode": "0644", "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data), **extra}


def upload_error(resp: Any, reason: str, phase: str = "blob_upload") -> dict[str, Any]:
    body = assert_error(resp, 400, "file_upload_error")
    detail = body["error_detail"]
    assert set(detail) <= TEMPLATE_FAILURE_KEYS, detail  # C12: exactly TemplateFailureDetail keys
    assert detail["code"] == "file_upload_error" and detail["phase"] == phase
    assert detail["details"]["reason"] == reason and isinstance(detail["retryable"], bool)
    return body


def test_preflight_upload_and_reuse(api: Api) -> None:
    data, same = b"print('hello')\n" + unique("x").encode(), b""
    files = [
        {"path": "builder-context/step-0/src-0/app", "entry_type": "dir", "mode": "0755"},
        descriptor("builder-context/step-0/src-0/app/main.py", data),
        descriptor("builder-context/step-1/src-0/copy.py", data),
        descriptor("builder-context/step-1/src-0/empty", same),
    ]
    resp = api.acme.post("/v1/templates/blobs/preflight", json={"files": files})
    assert resp.status_code == 200, resp.text
    results = resp.json()["files"]
    assert [r["path"] for r in results] == [f["path"] for f in files]  # C8: one per descriptor, same order
    assert results[0] == {"path": files[0]["path"], "entry_type": "dir", "missing": False, "mode": "0755"}
    assert results[1]["missing"] is True and results[1]["blob_id"] == results[2]["blob_id"]  # C11
    blob_id, empty_id = results[1]["blob_id"], results[3]["blob_id"]
    assert blob_id.startswith("blob_") and blob_id.replace("_", "").isalnum()
    upload_error(api.acme.put(f"/v1/templates/blobs/{blob_id}", content=data + b"!"), "part_size_mismatch")
    upload_error(api.acme.put(f"/v1/templates/blobs/{blob_id}", content=data[:-1] + b"?"), "whole_checksum_mismatch")
    upload_error(api.acme.put("/v1/templates/blobs/blob_unknown", content=data), "upload_expired")
    upload_error(api.other.put(f"/v1/templates/blobs/{blob_id}", content=data), "upload_expired")  # scoped
    headers = {"content-type": "application/octet-stream"}
    assert api.acme.put(f"/v1/templates/blobs/{blob_id}", content=data, headers=headers).status_code == 204
    assert api.acme.put(f"/v1/templates/blobs/{blob_id}", content=data, headers=headers).status_code == 204  # again
    assert api.acme.put(f"/v1/templates/blobs/{empty_id}", content=b"", headers=headers).status_code == 204  # C10
    again = api.acme.post("/v1/templates/blobs/preflight", json={"files": files[1:2]}).json()["files"][0]
    assert again == {**results[1], "missing": False}
    forced = api.acme.post("/v1/templates/blobs/preflight",
                           json={"files": [descriptor(files[1]["path"], data, force_upload=True)]}).json()["files"][0]
    assert forced["missing"] is True and forced["blob_id"] != blob_id  # R47
    # Another namespace must upload the bytes itself.
    theirs = api.other.post("/v1/templates/blobs/preflight", json={"files": files[1:2]}).json()["files"][0]
    assert theirs["missing"] is True and theirs["blob_id"] != blob_id
    # A build may use the uploaded blob; a never-uploaded or foreign blob is a file_upload_error before the build.
    context = {"files": [{"path": files[1]["path"], "entry_type": "file", "blob_id": blob_id, "mode": "0644"}]}
    step = [{"action": "copy", "sources": [files[1]["path"]], "dst": "/app/main.py"}]
    ok = api.acme.post("/v1/templates/builds", json={"name": unique("ctx"), "base_image": BASE, "steps": step,
                                                      "build_context": context})
    assert ok.status_code == 202, ok.text
    api.acme.post(f"/v1/templates/builds/{ok.json()['build_id']}/cancel", json={})
    missing_ctx = {"files": [{**context["files"][0], "blob_id": forced["blob_id"]}]}
    upload_error(api.acme.post("/v1/templates/builds", json={"name": unique("ctx"), "base_image": BASE,
                                                              "steps": step, "build_context": missing_ctx}),
                 "missing_parts")
    upload_error(api.other.post("/v1/templates/builds", json={"name": unique("ctx"), "base_image": BASE,
                                                               "steps": step, "build_context": context}),
                 "upload_expired")


def test_completed_blobs_are_immutable(api: Api) -> None:
    """Issue 12: the same bytes again are 204; different bytes (same size, longer, shorter) are 409."""
    data = b"immutable " + unique("blob").encode()
    result = api.acme.post("/v1/templates/blobs/preflight", json={"files": [descriptor("imm.txt", data)]}).json()
    blob_id = result["files"][0]["blob_id"]
    headers = {"content-type": "application/octet-stream"}
    assert api.acme.put(f"/v1/templates/blobs/{blob_id}", content=data, headers=headers).status_code == 204
    for other in (data[:-1] + b"?", data + b"!", data[:-1], b""):
        body = assert_error(api.acme.put(f"/v1/templates/blobs/{blob_id}", content=other, headers=headers), 409,
                            "conflict")
        assert "immutable" in body["error"] and "preflight" in body["error"]
    assert api.acme.put(f"/v1/templates/blobs/{blob_id}", content=data, headers=headers).status_code == 204


def test_preflight_rejects_bad_descriptors(api: Api) -> None:
    bad_sha = {"path": "a", "entry_type": "file", "sha256": "XYZ", "size_bytes": 1}
    body = upload_error(api.acme.post("/v1/templates/blobs/preflight", json={"files": [bad_sha]}),
                        "invalid_descriptor", phase="preflight")
    assert "sha256" in body["error"]
    too_big = {**descriptor("big", b"x"), "size_bytes": 1 << 50}
    upload_error(api.acme.post("/v1/templates/blobs/preflight", json={"files": [too_big]}), "size_limit_exceeded",
                 phase="preflight")
    upload_error(api.acme.post("/v1/templates/blobs/preflight", json={"files": [descriptor("../x", b"x")]}),
                 "directory_extract_invalid_path", phase="preflight")
    assert_error(api.acme.post("/v1/templates/blobs/preflight", json={}), 400, "invalid_request")


def test_authentication(api: Api) -> None:
    for method, path in (("GET", "/v1/templates"), ("POST", "/v1/templates/builds"),
                         ("GET", "/v1/templates/builds/tb_x"), ("PUT", "/v1/templates/blobs/blob_x"),
                         ("GET", "/v1/templates/refs/acme%2Fx"), ("POST", "/v1/templates/blobs/preflight")):
        body = assert_error(api.anonymous.request(method, path), 401, "unauthorized")
        assert "Authorization" in body["error"]
        assert_error(api.with_key("amber_wrong").request(method, path), 401, "unauthorized")
    assert_error(api.anonymous.get("/v1/templates", headers={"Authorization": "Basic abc"}), 401, "unauthorized")


def test_request_ids_and_unknown_routes(api: Api) -> None:
    ok = api.acme.get("/v1/templates")
    assert ok.headers["x-request-id"].startswith("req_")
    assert_error(api.acme.get("/v1/nothing-here"), 404, "not_found")
    assert_error(api.acme.put("/v1/templates/builds"), 405, "invalid_request")


def test_openapi_describes_all_36_operations(api: Api) -> None:
    doc = api.anonymous.get("/openapi.json").json()
    operations = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    expected = {
        ("POST", "/v1/templates"), ("POST", "/v1/templates/build"), ("POST", "/v1/templates/builds"),
        ("GET", "/v1/templates/builds/{build_id}"), ("GET", "/v1/templates/builds/{build_id}/logs"),
        ("POST", "/v1/templates/builds/{build_id}/cancel"), ("POST", "/v1/templates/builds/{build_id}/retry"),
        ("POST", "/v1/templates/builds/{build_id}/promote"), ("POST", "/v1/templates/plan"),
        ("POST", "/v1/templates/validate"), ("POST", "/v1/templates/blobs/preflight"),
        ("PUT", "/v1/templates/blobs/{blob_id}"), ("POST", "/v1/templates/claims"),
        ("DELETE", "/v1/templates/claims/{claim_token}"), ("GET", "/v1/templates/namespaces/{slug}"),
        ("GET", "/v1/templates"),
    }
    for form in ("/v1/templates/{id}", "/v1/templates/refs/{ref}"):
        expected |= {("POST", f"{form}/rename"), ("POST", f"{form}/tags"), ("GET", f"{form}/tags"),
                     ("DELETE", f"{form}/tags/{{tag}}"), ("GET", f"{form}/aliases"),
                     ("DELETE", f"{form}/aliases/{{alias}}"), ("PATCH", f"{form}/visibility"),
                     ("GET", form), ("DELETE", form), ("GET", f"{form}/builds")}
    assert len(expected) == 36
    assert {op for op in operations if op[1].startswith("/v1/templates/") or op[1] == "/v1/templates"} == expected
    machine_operations = {op for op in operations if op[1].startswith(("/v1/machines", "/v1/snapshots"))}
    assert {("POST", "/v1/machines"), ("GET", "/v1/machines/{machine_id}"),
            ("POST", "/v1/machines/{machine_id}/exec")} <= machine_operations
    assert operations == expected | machine_operations | {
        op for op in operations if op[1].startswith("/v1/template-warm-pools")}
    assert "CreateTemplateRequest" in doc["components"]["schemas"]
    assert doc["paths"]["/v1/templates/builds"]["post"]["responses"]["202"]
