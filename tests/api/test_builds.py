"""Build endpoints over HTTP with no workers (builds stay ``waiting``): acceptance and validation (R3, R16-R24),
status snapshots and offsets (C6, C7), SSE replay/follow/heartbeats (C1-C3), cancel (R23), retry (R24, R41),
promote (R25), caller scoping, nothing half-created after rejected calls, secrets never stored."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from tests.api.conftest import Api
from tests.api.test_catalog import assert_error, enc, unique
from tests.support.seed import seed_template

BASE = "127.0.0.1:5999/team/busybox:latest"


def sse_entries(resp: httpx.Response, stop_after: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Parse an SSE stream as the SDK does (``data: `` lines); also count keepalive comments."""
    entries: list[dict[str, Any]] = []
    keepalives = 0
    for line in resp.iter_lines():
        if line.startswith("data: "):
            entries.append(json.loads(line[6:]))
            if stop_after is not None and len(entries) >= stop_after:
                break
        elif line.startswith(": keepalive"):
            keepalives += 1
    return entries, keepalives


def start(api: Api, client: httpx.Client | None = None, **extra: Any) -> dict[str, Any]:
    body = {"name": unique("b"), "base_image": BASE, "steps": [{"action": "run", "command": "echo hi"}], **extra}
    resp = (client or api.acme).post("/v1/templates/builds", json=body)
    assert resp.status_code == 202, resp.text
    build: dict[str, Any] = resp.json()
    return build


def count_rows(api: Api, table: str) -> int:
    engine = create_engine(api.database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def test_background_build_is_accepted_with_a_complete_handle(api: Api) -> None:
    build = start(api, tags=["stable", "v1"], build_config={"vcpus": 1, "memory_mib": 256})
    assert build["build_id"].startswith("tb_") and build["template_id"].startswith("tmpl_")
    assert build["status"] == "waiting"
    assert build["tags"] == ["stable", "v1"]
    assert build["build_backend"] == "native" and build["source_type"] == "declarative"
    assert build["namespace_slug"] == "acme" and build["visibility"] == "private"
    assert build["canonical_ref"] == f"acme/{build['name']}:stable"
    assert build["build_config"] == {"vcpus": 1, "memory_mib": 256}
    assert build["created_at"].endswith("Z") and build["queued_at"].endswith("Z")
    assert build["promotability"] == {"status": "not_ready", "promotable": False, "reason": "build still running"}
    assert None not in build.values()
    default_tags = start(api)
    assert default_tags["tags"] == ["default"]  # R3


def test_status_snapshot_offsets(api: Api) -> None:
    build = start(api)
    bid = build["build_id"]
    snap = api.acme.get(f"/v1/templates/builds/{bid}", params={"offset": 0}).json()
    assert snap["build"]["build_id"] == bid and snap["build"]["template_id"] == build["template_id"]
    assert [e["kind"] for e in snap["entries"]] == ["start"]
    assert snap["entries"][0]["offset"] == 0 and snap["next_offset"] == 1
    entry = snap["entries"][0]
    assert entry["build_id"] == bid and entry["template_id"] == build["template_id"] and entry["level"] == "info"
    later = api.acme.get(f"/v1/templates/builds/{bid}", params={"offset": 1}).json()
    assert later["entries"] == [] and later["next_offset"] == 1
    beyond = api.acme.get(f"/v1/templates/builds/{bid}", params={"offset": 7}).json()
    assert beyond["entries"] == [] and beyond["next_offset"] == 7
    assert_error(api.acme.get(f"/v1/templates/builds/{bid}", params={"offset": -1}), 400, "invalid_request")
    api.acme.post(f"/v1/templates/builds/{bid}/cancel", json={})


def test_cancel_is_durable_and_idempotent(api: Api) -> None:
    build = start(api)
    bid = build["build_id"]
    resp = api.acme.post(f"/v1/templates/builds/{bid}/cancel", json={"reason": "changed my mind"})
    assert resp.status_code == 200, resp.text
    snap = resp.json()
    assert snap["build"]["status"] == "cancelled"
    assert snap["build"]["cancellation_reason"] == "changed my mind"
    assert snap["build"]["cancel_requested_at"].endswith("Z")
    assert [e["kind"] for e in snap["entries"]] == ["start", "cancelled"]
    assert snap["next_offset"] == 2
    again = api.acme.post(f"/v1/templates/builds/{bid}/cancel", json={}).json()
    assert [e["kind"] for e in again["entries"]] == ["start", "cancelled"]  # nothing new (R23)
    no_body = api.acme.post(f"/v1/templates/builds/{bid}/cancel")
    assert no_body.status_code == 200
    assert api.acme.get(f"/v1/templates/builds/{bid}").json()["build"]["status"] == "cancelled"


def test_log_replay_and_follow(api: Api) -> None:
    build = start(api)
    bid = build["build_id"]
    with api.acme.stream("GET", f"/v1/templates/builds/{bid}/logs", params={"follow": "false", "offset": 0}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        entries, _ = sse_entries(r)  # returns: the server closes after the replay
    assert [e["kind"] for e in entries] == ["start"]

    def cancel_soon() -> None:
        time.sleep(2.5)
        api.acme2.post(f"/v1/templates/builds/{bid}/cancel", json={})

    threading.Thread(target=cancel_soon).start()
    with api.acme.stream("GET", f"/v1/templates/builds/{bid}/logs", params={"follow": "true", "cursor": 0}) as r:
        raw = r.read().decode()
    # Framing (C1): id = offset, event: log, one JSON document per data line; heartbeats while idle (C3).
    assert "id: 0\nevent: log\ndata: {" in raw
    assert raw.count(": keepalive") >= 1
    kinds = [json.loads(line[6:])["kind"] for line in raw.splitlines() if line.startswith("data: ")]
    assert kinds == ["start", "cancelled"]
    # offset wins over cursor; a terminal build's follow behaves like a replay.
    with api.acme.stream("GET", f"/v1/templates/builds/{bid}/logs",
                         params={"follow": "true", "offset": 1, "cursor": 0}) as r:
        entries, _ = sse_entries(r)
    assert [e["offset"] for e in entries] == [1]


def test_streaming_build_starts_with_start_and_ends_on_cancel(api: Api) -> None:
    name = unique("sse")
    body = {"name": name, "base_image": BASE, "steps": []}
    collected: list[dict[str, Any]] = []

    def cancel_when_started() -> None:
        for _ in range(100):
            if collected:
                api.acme2.post(f"/v1/templates/builds/{collected[0]['build_id']}/cancel", json={"reason": "test"})
                return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_when_started)
    canceller.start()
    with api.acme.stream("POST", "/v1/templates/build", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                collected.append(json.loads(line[6:]))
    canceller.join()
    assert [e["kind"] for e in collected] == ["start", "cancelled"]
    assert len({(e["build_id"], e["template_id"]) for e in collected}) == 1  # C5


def test_blocking_create_reports_the_terminal_state(api: Api) -> None:
    name = unique("blocking")
    result: dict[str, httpx.Response] = {}

    def create() -> None:
        result["resp"] = api.acme.post("/v1/templates", json={"name": name, "base_image": BASE})

    worker = threading.Thread(target=create)
    worker.start()
    for _ in range(100):
        builds = api.acme.get(f"/v1/templates/refs/{enc(name)}/builds")
        if builds.status_code == 200 and builds.json()["builds"]:
            break
        time.sleep(0.1)
    bid = builds.json()["builds"][0]["build_id"]
    api.acme2.post(f"/v1/templates/builds/{bid}/cancel", json={})
    worker.join(timeout=30)
    body = assert_error(result["resp"], 400, "build_error")
    assert body["build_id"] == bid


def test_other_caller_gets_404_on_every_build_endpoint(api: Api) -> None:
    bid = start(api)["build_id"]
    for method, path, body in (
        ("GET", f"/v1/templates/builds/{bid}", None),
        ("GET", f"/v1/templates/builds/{bid}/logs", None),
        ("POST", f"/v1/templates/builds/{bid}/cancel", {}),
        ("POST", f"/v1/templates/builds/{bid}/retry", {}),
        ("POST", f"/v1/templates/builds/{bid}/promote", {"tag": "x"}),
    ):
        assert_error(api.other.request(method, path, json=body), 404, "template_build_not_found")
    assert_error(api.acme.get("/v1/templates/builds/tb_unknown"), 404, "template_build_not_found")
    # Static segments win over {id} (§1): this is the status route with build id "builds".
    assert_error(api.acme.get("/v1/templates/builds/builds"), 404, "template_build_not_found")
    assert api.acme.get(f"/v1/templates/builds/{bid}").status_code == 200
    api.acme.post(f"/v1/templates/builds/{bid}/cancel", json={})


def test_retry_and_promote_rules(api: Api) -> None:
    build = start(api, tags=["first"])
    bid = build["build_id"]
    assert_error(api.acme.post(f"/v1/templates/builds/{bid}/retry", json={}), 409, "conflict")  # still active
    assert_error(api.acme.post(f"/v1/templates/builds/{bid}/promote", json={"tag": "x"}), 409, "conflict")
    api.acme.post(f"/v1/templates/builds/{bid}/cancel", json={})
    retried = api.acme.post(f"/v1/templates/builds/{bid}/retry", json={})
    assert retried.status_code == 202, retried.text
    attempt = retried.json()
    assert attempt["build_id"] != bid and attempt["template_id"] != build["template_id"]
    assert attempt["retry_of_build_id"] == bid and attempt["original_build_id"] == bid
    assert attempt["tags"] == ["first"] and attempt["name"] == build["name"]
    api.acme.post(f"/v1/templates/builds/{attempt['build_id']}/cancel", json={})
    with_tags = api.acme.post(f"/v1/templates/builds/{attempt['build_id']}/retry", json={"tags": ["again"]}).json()
    assert with_tags["tags"] == ["again"] and with_tags["original_build_id"] == bid
    api.acme.post(f"/v1/templates/builds/{with_tags['build_id']}/cancel", json={})
    assert_error(api.acme.post(f"/v1/templates/builds/{bid}/retry", json={"tags": []}), 400, "invalid_request")
    assert_error(api.acme.post(f"/v1/templates/builds/{bid}/promote", json={}), 400, "invalid_request")
    history = api.acme.get(f"/v1/templates/refs/{enc(build['name'])}/builds").json()["builds"]
    assert [b["build_id"] for b in history] == [with_tags["build_id"], attempt["build_id"], bid]  # newest first
    assert all(b["status"] == "cancelled" for b in history)
    page = api.acme.get(f"/v1/templates/refs/{enc(build['name'])}/builds", params={"limit": 2}).json()
    assert len(page["builds"]) == 2 and "next_cursor" in page
    rest = api.acme.get(f"/v1/templates/refs/{enc(build['name'])}/builds",
                        params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [b["build_id"] for b in rest["builds"]] == [bid] and "next_cursor" not in rest
    filtered = api.acme.get(f"/v1/templates/refs/{enc(build['name'])}/builds", params={"status": "ready"}).json()
    assert filtered["builds"] == []
    assert_error(api.acme.get(f"/v1/templates/refs/{enc(build['name'])}/builds", params={"status": "nope"}), 400,
                 "invalid_request")


def test_promote_moves_tags_onto_a_ready_build(api: Api) -> None:
    name = unique("promo")
    first = seed_template(api.database_url, "acme", name, ["stable"])
    seed_template(api.database_url, "acme", name, ["latest"])
    info = api.acme.post(f"/v1/templates/builds/{first.build_id}/promote", json={"tag": "latest"})
    # The seeded build belongs to the namespace, so the acme key may promote it.
    assert info.status_code == 200, info.text
    assert info.json()["id"] == first.artifact_id and info.json()["canonical_ref"] == f"acme/{name}:latest"
    assert api.acme.get(f"/v1/templates/refs/{enc(f'{name}:latest')}").json()["id"] == first.artifact_id
    assert_error(api.acme.post(f"/v1/templates/builds/{first.build_id}/promote", json={"tag": "bad tag"}), 400,
                 "invalid_request")


def test_retry_needs_fresh_credentials_and_secrets(api: Api) -> None:
    auth = {"kind": "basic", "username": "u", "password": "hunter2-secret-pw"}
    build = start(api, base_image_auth=auth)
    bid = build["build_id"]
    api.acme.post(f"/v1/templates/builds/{bid}/cancel", json={})
    body = assert_error(api.acme.post(f"/v1/templates/builds/{bid}/retry", json={}), 400, "invalid_request")
    assert "base_image_auth" in body["error"]
    ok = api.acme.post(f"/v1/templates/builds/{bid}/retry", json={"base_image_auth": auth})
    assert ok.status_code == 202, ok.text
    api.acme.post(f"/v1/templates/builds/{ok.json()['build_id']}/cancel", json={})
    # Credential values never reach the database (R39).
    engine = create_engine(api.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT definition FROM builds WHERE id = :id"), {"id": bid}).all()
            dump = json.dumps([str(r[0]) for r in rows])
            entries = conn.execute(text("SELECT entry_json FROM build_log_entries")).all()
    finally:
        engine.dispose()
    assert "hunter2-secret-pw" not in dump and "basic" in dump
    assert all("hunter2-secret-pw" not in r[0] for r in entries)


def test_inline_context_builds_are_not_retryable(api: Api) -> None:
    content = base64.b64encode(b"hello").decode()
    build = start(api, build_context={"files": [{"path": "ctx/a.txt", "entry_type": "file",
                                                 "content_base64": content}]},
                  steps=[{"action": "copy", "sources": ["ctx/a.txt"], "dst": "/a.txt"}])
    api.acme.post(f"/v1/templates/builds/{build['build_id']}/cancel", json={})
    body = assert_error(api.acme.post(f"/v1/templates/builds/{build['build_id']}/retry", json={}), 400,
                        "invalid_request")
    assert "build_context" in body["error"]


def test_bad_input_is_rejected_naming_the_field_and_creates_nothing(api: Api) -> None:
    templates_before, builds_before = count_rows(api, "templates"), count_rows(api, "builds")
    cases = [
        ({"name": unique("x"), "base_image": BASE, "tags": []}, "tags"),
        ({"name": unique("x")}, ""),
        ({"name": "a/b", "base_image": BASE}, "name"),
        ({"name": unique("x"), "base_image": BASE, "steps": [{"action": "run"}]}, "steps[0].command"),
        ({"name": unique("x"), "base_image": BASE, "steps": [{"action": "teleport"}]}, "steps[0]"),
        ({"name": unique("x"), "base_image": BASE, "build_config": {"vcpus": "two"}}, "build_config.vcpus"),
        ({"name": unique("x"), "dockerfile": "FROM scratch\n", "build_backend": "native"}, "build_backend"),
        ({"name": unique("x"), "base_image": BASE, "claim_token": "claim_nope"}, "claim_token"),
        ({"name": unique("x"), "base_image": BASE, "build_context": {"files": [
            {"path": "f", "entry_type": "file"}]}}, "build_context.files[0]"),
    ]
    for endpoint in ("/v1/templates/builds", "/v1/templates/build", "/v1/templates"):
        for body, field in cases:
            resp = api.acme.post(endpoint, json=body)
            err = assert_error(resp, 400, "invalid_request")
            assert field in err["error"], (endpoint, body, err)
    assert_error(api.acme.post("/v1/templates/builds", content=b"{not json",
                               headers={"content-type": "application/json"}), 400, "invalid_request")
    assert_error(api.acme.post("/v1/templates/builds", json=[1, 2]), 400, "invalid_request")
    assert count_rows(api, "templates") == templates_before
    assert count_rows(api, "builds") == builds_before


def test_template_base_must_be_visible(api: Api) -> None:
    body = assert_error(api.acme.post("/v1/templates/builds", json={"name": unique("x"), "base_image": "tmpl_nope"}),
                        400, "invalid_request")
    assert "base_image" in body["error"]
    name = unique("private-base")
    seeded = seed_template(api.database_url, "acme", name, ["default"])
    assert_error(api.other.post("/v1/templates/builds", json={"name": unique("x"), "base_image": seeded.artifact_id}),
                 400, "invalid_request")
    ok = api.acme.post("/v1/templates/builds", json={"name": unique("x"), "base_image": seeded.artifact_id})
    assert ok.status_code == 202 and ok.json()["source_type"] == "template_base"
    api.acme.post(f"/v1/templates/builds/{ok.json()['build_id']}/cancel", json={})


def test_unknown_keys_are_ignored(api: Api) -> None:
    build = start(api, some_future_field={"x": 1})
    api.acme.post(f"/v1/templates/builds/{build['build_id']}/cancel", json={"reason": "x", "extra": True})


def test_plan_of_a_template_base_shows_the_inherited_start_cmd_and_probe(api: Api) -> None:
    readiness = {"kind": "tcp", "port": 8080, "timeout_secs": 30, "interval_ms": 100, "startup_grace_secs": 0}
    seeded = seed_template(api.database_url, "acme", unique("parent"), ["default"], runtime_defaults={
        "default_env_keys": ["PATH"], "default_user": "app", "default_workdir": "/srv",
        "start_cmd": "exec httpd -f -p 8080", "readiness": readiness})  # fmt: skip
    body: dict[str, Any] = {"base_image": seeded.artifact_id, "steps": [{"action": "run", "command": "echo hi"}]}
    inherited = api.acme.post("/v1/templates/plan", json=body)
    assert inherited.status_code == 200, inherited.text
    plan = inherited.json()["build_plan"]
    assert plan["start_cmd"] == "exec httpd -f -p 8080" and plan["readiness"] == readiness
    assert plan["default_user"] == "app" and plan["default_workdir"] == "/srv"
    # A child readiness probe alone keeps the parent's start command (and draws no "nothing starts" warning).
    probe = {"kind": "tcp", "port": 9000, "timeout_secs": 5, "interval_ms": 100, "startup_grace_secs": 0}
    own_probe = api.acme.post("/v1/templates/plan", json=body | {"runtime_config": {"readiness": probe}}).json()
    assert own_probe["build_plan"]["start_cmd"] == "exec httpd -f -p 8080"
    assert own_probe["build_plan"]["readiness"] == probe
    assert not any("nothing starts" in w for w in own_probe["warnings"])
    # The child's own start_cmd replaces the command and the probe.
    own = api.acme.post("/v1/templates/plan", json=body | {"start_cmd": "sleep 100"}).json()["build_plan"]
    assert own["start_cmd"] == "sleep 100" and own.get("readiness") is None


def test_plan_and_validate(api: Api) -> None:
    body = {"name": "p", "base_image": BASE, "steps": [{"action": "run", "command": "echo hi"}],
            "start_cmd": "sleep 100"}
    plan = api.acme.post("/v1/templates/plan", json=body)
    assert plan.status_code == 200, plan.text
    assert plan.json()["build_plan"]["run_steps"] == ["echo hi"]
    assert plan.json()["requires_base_image_auth"] is False
    assert_error(api.acme.post("/v1/templates/plan", json={"base_image": BASE, "tags": []}), 400, "invalid_request")
    ok = api.acme.post("/v1/templates/validate", json=body).json()
    assert ok["valid"] is True and ok["errors"] == []
    bad = api.acme.post("/v1/templates/validate", json={"base_image": BASE, "tags": []})
    assert bad.status_code == 200 and bad.json()["valid"] is False
    assert any("tags" in e["message"] for e in bad.json()["errors"])
    assert count_rows(api, "builds") >= 0
