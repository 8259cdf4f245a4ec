"""Strict grammars at accept, validate and plan (issue 12): malformed image references in ``base_image`` and in a
Dockerfile ``FROM``, and malformed build-context paths (in the request and at the blob preflight, one rule), are
each refused with a 400 naming the field; ``/validate`` reports the same problem as data. A 405 lists every
method the path answers to."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.test_builds import BASE
from tests.api.test_catalog import assert_error

BAD_REFERENCES = [
    ".", "UPPER/Case", "x:y:z", "127.0.0.1:5101/../../etc", "Foo", "a..b", "x/", "/x", "a@sha256:xyz",
    "127.0.0.1:5101/team/app:", "127.0.0.1:5101//app", "tmpl_bad/x:y", "nullspace/../x",
]
BAD_PATHS = [".", "a//b", "a\\b", "a\x00b", "../x", "a/../b", "a/./b", "/abs", "", "a//"]


def expect_400(resp: Any, field: str) -> str:
    body = assert_error(resp, 400, "invalid_request")
    assert body["error"].startswith(f"{field}: "), (field, body["error"])
    return str(body["error"])


@pytest.mark.parametrize("reference", BAD_REFERENCES)
def test_malformed_base_image_is_refused_naming_the_field(api: Api, reference: str) -> None:
    request = {"name": "bad-ref", "base_image": reference, "steps": [{"action": "run", "command": "true"}]}
    for path in ("/v1/templates/builds", "/v1/templates/build", "/v1/templates", "/v1/templates/plan"):
        expect_400(api.acme.post(path, json=request), "base_image")
    report = api.acme.post("/v1/templates/validate", json=request).json()
    assert report["valid"] is False and report["errors"][0]["field"] == "base_image", report


@pytest.mark.parametrize("reference", [*BAD_REFERENCES[:4], "127.0.0.1:5101/Team/app"])
def test_malformed_from_is_refused_naming_the_dockerfile(api: Api, reference: str) -> None:
    request = {"name": "bad-from", "dockerfile": f"FROM {reference}\nRUN true\n"}
    for path in ("/v1/templates/builds", "/v1/templates/plan"):
        message = expect_400(api.acme.post(path, json=request), "dockerfile")
        assert "line 1" in message
    report = api.acme.post("/v1/templates/validate", json=request).json()
    assert report["valid"] is False and report["errors"][0]["field"] == "dockerfile", report


@pytest.mark.parametrize("path", BAD_PATHS)
def test_malformed_context_paths_are_refused_everywhere(api: Api, path: str) -> None:
    """One path rule: the request's build context, a copy step's sources and the blob preflight."""
    inline = {"path": path, "entry_type": "file", "content_base64": "aGk="}
    request = {"name": "bad-path", "base_image": BASE, "build_context": {"files": [inline]}}
    for endpoint in ("/v1/templates/builds", "/v1/templates/plan"):
        expect_400(api.acme.post(endpoint, json=request), "build_context.files[0].path")
    report = api.acme.post("/v1/templates/validate", json=request).json()
    assert report["errors"][0]["field"] == "build_context.files[0].path", report
    copy = {"name": "bad-copy", "base_image": BASE, "steps": [{"action": "copy", "sources": [path], "dst": "/x"}]}
    expect_400(api.acme.post("/v1/templates/builds", json=copy), "steps[0].sources[0]")
    dockerfile = {"name": "bad-df", "dockerfile_path": path, "build_context": {"files": [
        {"path": "Dockerfile", "entry_type": "file", "content_base64": "RlJPTSBzY3JhdGNoCg=="}]}}
    assert api.acme.post("/v1/templates/builds", json=dockerfile).status_code == 400

    data = b"x"
    descriptor = {"path": path, "entry_type": "file", "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": 1}
    body = assert_error(api.acme.post("/v1/templates/blobs/preflight", json={"files": [descriptor]}), 400,
                        "file_upload_error")
    assert body["error"].startswith("files[0] (") and body["error_detail"]["phase"] == "preflight"
    assert body["error_detail"]["details"] == {"reason": "directory_extract_invalid_path", "path": path}


def test_a_405_lists_every_method_of_the_path(api: Api) -> None:
    cases = {
        "/v1/templates/builds": ("PUT", "DELETE, GET, POST"),  # POST here, GET/DELETE as the {id} route
        "/v1/templates/tmpl_x": ("POST", "DELETE, GET"),
        "/v1/templates/tmpl_x/tags": ("PATCH", "GET, POST"),
        "/v1/templates/blobs/blob_x": ("GET", "PUT"),
        "/v1/templates/builds/tb_x/cancel": ("GET", "POST"),
    }
    for path, (method, allow) in cases.items():
        resp = api.acme.request(method, path)
        body = assert_error(resp, 405, "invalid_request")
        assert resp.headers["allow"] == allow, (path, resp.headers)
        assert body["error"].endswith(f"allowed: {allow}")
