"""Two `amber serve` processes sharing one PostgreSQL database (the multi-host deployment): keys, builds and
logs are shared; a cancel on one host reaches a live SSE follower on the other through the database."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

from tests.support.postgres import PostgresServer
from tests.support.server import running_server


def test_two_servers_share_builds_and_logs(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database(f"amber_multi_{uuid.uuid4().hex[:8]}")
    env = {"AMBER_LOG_POLL_SECS": "0.5", "AMBER_SSE_HEARTBEAT_SECS": "5"}
    with running_server(tmp_path / "a", url, workers=0, env=env) as a, \
            running_server(tmp_path / "b", url, workers=0, env=env) as b:
        key = a.create_key("acme")
        with a.client(key) as on_a, b.client(key) as on_b:
            body = {"name": "shared", "base_image": "127.0.0.1:1/x:latest"}
            build = on_a.post("/v1/templates/builds", json=body).json()
            bid = build["build_id"]
            assert on_b.get(f"/v1/templates/builds/{bid}").json()["build"]["template_id"] == build["template_id"]
            kinds: list[str] = []

            def follow() -> None:
                with on_a.stream("GET", f"/v1/templates/builds/{bid}/logs", params={"follow": "true"}) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            kinds.append(json.loads(line[6:])["kind"])

            follower = threading.Thread(target=follow)
            follower.start()
            while not kinds:
                time.sleep(0.05)
            assert on_b.post(f"/v1/templates/builds/{bid}/cancel", json={}).status_code == 200
            follower.join(timeout=60)  # a liveness bound: the entry arrives through host A's database poll
            assert not follower.is_alive()
            assert kinds == ["start", "cancelled"]
