"""The one JSON body reader (issue 12, ``amber.api.body``): on every JSON endpoint a body nested 1,000 or 100,000
levels deep is a 400 naming the problem, a body over ``AMBER_MAX_JSON_BODY_BYTES`` is a 413, and unknown fields
are ignored as the contract says and never stored (the database does not grow with them). Raw uploads are outside
the JSON limit; routes added later (machines, warm pools) get the reader without doing anything."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI, Request, params
from fastapi.routing import APIRoute
from sqlalchemy import create_engine, text

from amber.api.body import JsonBodyMiddleware, declared_media_types, json_depth, raw_body_openapi, reads_json
from amber.settings import Settings
from tests.api.conftest import Api
from tests.api.test_builds import BASE
from tests.api.test_catalog import assert_error, unique

LIMIT = Settings().max_json_body_bytes  # the API server runs with the default
FILL = {"id": "tmpl_x", "ref": "acme%2Fx", "build_id": "tb_x", "tag": "t", "alias": "a", "claim_token": "c",
        "blob_id": "blob_x", "slug": "acme", "machine_id": "mch_x", "pid": "1", "port": "8080",
        "snapshot_id": "snap_x", "pool_id": "twp_x"}
# Machine, snapshot and warm-pool routes that take no body declare none (a template route without one is JSON).
_DECLARED_ONLY = ("/v1/machines", "/v1/snapshots", "/v1/template-warm-pools")


def json_operations(api: Api) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation in the OpenAPI document that takes a JSON body."""
    doc = api.anonymous.get("/openapi.json").json()
    out = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method.upper() not in ("POST", "PUT", "PATCH"):
                continue
            if "requestBody" not in operation and path.startswith(_DECLARED_ONLY):
                continue
            content = operation.get("requestBody", {}).get("content", {"application/json": {}})
            if "application/json" in content:
                out.append((method.upper(), path.format(**FILL)))
    return sorted(out)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_the_json_endpoints_are_the_contracts(api: Api) -> None:
    operations = json_operations(api)
    templates = [op for op in operations if op[1].startswith("/v1/templates")]
    assert len(templates) == 16, templates
    assert ("POST", "/v1/machines/mch_x/exec") in operations  # the machine API is under the same reader
    assert ("PUT", "/v1/templates/blobs/blob_x") not in operations  # raw bytes: outside the JSON reader


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_nesting_is_a_400_on_every_json_endpoint(api: Api, depth: int) -> None:
    for method, path in json_operations(api):
        for levels, body in ((depth, nested(depth)), (depth + 1, b'{"name": "x", "unknown": ' + nested(depth) + b"}")):
            resp = api.acme.request(method, path, content=body, headers={"content-type": "application/json"})
            error = assert_error(resp, 400, "invalid_request")
            assert f"{levels} levels deep" in error["error"] and "at most 64" in error["error"], (method, path)
    # Without a content type, or with another one, the body is still JSON to these routes and still checked.
    for headers in ({}, {"content-type": "text/plain"}):
        resp = api.acme.post("/v1/templates/builds", content=nested(depth), headers=headers)
        assert_error(resp, 400, "invalid_request")


def test_the_connection_survives_a_refused_body(api: Api) -> None:
    """A 400/413 answered by the reader keeps the keep-alive connection usable (the 500s it replaces closed it)."""
    with httpx.Client(base_url=api.server.url, headers=dict(api.acme.headers), timeout=30) as client:
        assert_error(client.post("/v1/templates/validate", content=nested(100_000)), 400, "invalid_request")
        assert_error(client.post("/v1/templates/validate", content=b" " * (LIMIT + 1)), 413, "invalid_request")
        assert client.get("/v1/templates").status_code == 200


def test_a_body_over_the_limit_is_a_413_on_every_json_endpoint(api: Api) -> None:
    padding = "x" * LIMIT
    for method, path in json_operations(api):
        resp = api.acme.request(method, path, json={"name": "x", "unknown": padding})
        error = assert_error(resp, 413, "invalid_request")
        assert f"{LIMIT}-byte limit" in error["error"] and "AMBER_MAX_JSON_BODY_BYTES" in error["error"]

    def chunked() -> Any:  # no Content-Length: the limit applies while reading
        yield b'{"unknown": "'
        for _ in range(LIMIT // 65536 + 1):
            yield b"y" * 65536
        yield b'"}'

    assert_error(api.acme.post("/v1/templates/builds", content=chunked()), 413, "invalid_request")


def database_bytes(api: Api) -> int:
    url = api.database_url
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        total = 0
        for suffix in ("", "-wal"):
            try:
                with open(path + suffix, "rb") as f:
                    total += f.seek(0, 2)
            except FileNotFoundError:
                pass
        return total
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        engine.dispose()


def test_unknown_fields_are_ignored_and_never_stored(api: Api) -> None:
    """Every JSON endpoint answers a body with unknown fields (top level and nested, 4 MiB of them) as it
    answers the same body without them, and the database does not grow by them; 50 MiB is a 413."""
    junk = "u" * 1024**2  # four copies per request stay under the 8 MiB limit
    name = unique("unk")
    blob_data = b"unknown fields\n" + name.encode()
    descriptor = {"path": "a.txt", "entry_type": "file", "sha256": hashlib.sha256(blob_data).hexdigest(),
                  "size_bytes": len(blob_data)}
    cases: list[tuple[str, str, dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]]] = [
        ("POST", "/v1/templates/builds", {"name": name, "base_image": BASE,
                                           "build_config": {"vcpus": 1}, "steps": [{"action": "run",
                                                                                    "command": "true"}]},
         lambda b: {**b, "build_config": {**b["build_config"], "junk": junk},
                    "steps": [{**b["steps"][0], "junk": junk}]}),
        ("POST", "/v1/templates/plan", {"base_image": BASE}, lambda b: {**b, "runtime_config": {"junk": junk}}),
        ("POST", "/v1/templates/validate", {"base_image": BASE}, lambda b: b),
        ("POST", "/v1/templates/blobs/preflight", {"files": [descriptor]},
         lambda b: {"files": [{**b["files"][0], "junk": junk}]}),
        ("POST", "/v1/templates/claims", {"template_ref": unique("claimed")}, lambda b: b),
    ]
    before = database_bytes(api)
    for method, path, body, add_nested in cases:
        plain = api.acme.request(method, path, json=body)
        if path == "/v1/templates/builds":  # a second build of the same name would also be accepted
            body = {**body, "name": unique("unk")}
        if path == "/v1/templates/claims":
            body = {"template_ref": unique("claimed")}
        with_junk = api.acme.request(method, path, json={**add_nested(body), "junk": junk, "more": {"x": junk}})
        assert with_junk.status_code == plain.status_code, (path, plain.text, with_junk.text[:300])
        assert junk not in with_junk.text
        if path == "/v1/templates/builds":
            build = with_junk.json()
            status = api.acme.get(f"/v1/templates/builds/{build['build_id']}").json()
            assert "junk" not in json.dumps(status)
            api.acme.post(f"/v1/templates/builds/{build['build_id']}/cancel", json={"reason": "done", "junk": junk})
            api.acme.post(f"/v1/templates/builds/{plain.json()['build_id']}/cancel", json={})
    deepest = api.acme.post("/v1/templates/builds", content=b'{"name": "%s", "base_image": "%s", "unknown": %s}'
                            % (unique("deep").encode(), BASE.encode(), nested(63)))  # 64 levels: the most allowed
    assert deepest.status_code == 202, deepest.text  # was a 500 at 255 levels
    api.acme.post(f"/v1/templates/builds/{deepest.json()['build_id']}/cancel", json={})
    huge = api.acme.post("/v1/templates/builds", json={"name": unique("huge"), "base_image": BASE,
                                                        "unknown": "z" * (50 * 1024**2)})
    assert_error(huge, 413, "invalid_request")
    assert database_bytes(api) - before < 1024**2


def test_raw_uploads_are_outside_the_json_reader(api: Api) -> None:
    """A blob larger than the JSON limit, full of brackets, uploads fine (its own limit is max_blob_bytes)."""
    data = b"[" * (LIMIT + 1024)
    sha = hashlib.sha256(data).hexdigest()
    files = [{"path": "brackets.bin", "entry_type": "file", "sha256": sha, "size_bytes": len(data)}]
    result = api.acme.post("/v1/templates/blobs/preflight", json={"files": files}).json()["files"][0]
    if result["missing"]:
        resp = api.acme.put(f"/v1/templates/blobs/{result['blob_id']}", content=data,
                            headers={"content-type": "application/octet-stream"})
        assert resp.status_code == 204, resp.text


def test_json_depth_counts_brackets_outside_strings() -> None:
    assert json_depth(b"") == 0 and json_depth(b"1") == 0 and json_depth(b"[]") == 1
    assert json_depth(b'{"a": [1, {"b": []}]}') == 4
    assert json_depth(b'["[[[[", "\\"[[[", {"k\\\\": "]]]"}]') == 2
    assert json_depth(nested(100_000)) == 100_000
    assert json_depth(b'"unterminated [[[[') == 0  # not JSON: the route's parser says so
    assert json_depth(b'"' + b'\\"' * 100_000) == 0  # linear even for pathological strings


def app_with_reader(max_bytes: int = 1000, max_depth: int = 4) -> FastAPI:
    app = FastAPI()

    @app.post("/json")
    async def json_route(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.put("/raw", openapi_extra=raw_body_openapi("application/octet-stream"))
    async def raw_route(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    app.add_middleware(JsonBodyMiddleware, max_bytes=max_bytes, max_depth=max_depth)
    return app


def test_routes_opt_out_only_by_declaring_a_non_json_body() -> None:
    app = app_with_reader()

    @app.post("/added-later")  # e.g. amber.machines installing its routes after create_app
    async def later(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    routes = {getattr(r, "path", ""): r for r in app.router.routes}
    assert [reads_json(routes[p]) for p in ("/json", "/raw")] == [True, False]  # type: ignore[arg-type]
    # File/Form parameters (multipart) opt out too; FastAPI builds such routes only with python-multipart
    # installed, so the route is described here by what FastAPI records for them.
    multipart = SimpleNamespace(openapi_extra=None, body_field=SimpleNamespace(field_info=params.File()))
    assert declared_media_types(cast(APIRoute, multipart)) == ["multipart/form-data"]
    assert not reads_json(cast(APIRoute, multipart))
    big, deep = b"[" * 2000, nested(5)

    async def calls() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return [
                (await client.post("/json", content=nested(4))).json(),
                (await client.post("/json", content=deep)).status_code,
                (await client.post("/json", content=big)).status_code,
                (await client.post("/added-later", content=deep)).status_code,
                (await client.post("/added-later", content=big)).status_code,
                (await client.put("/raw", content=big)).json(),
                (await client.get("/json")).status_code,  # another method: the router answers, nothing is read
            ]

    assert asyncio.run(calls()) == [{"bytes": 8}, 400, 413, 400, 413, {"bytes": 2000}, 405]
