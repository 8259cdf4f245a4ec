"""Two namespaces sharing a server with one build worker (issue 11): one queues 5 slow builds, then the other
queues one; the other's build starts as soon as the first slow build frees the worker (within one worker slot),
not after all five. The builds are slow because their registry accepts connections and never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from amber.guest.install import ensure_guest
from amber.settings import get_settings
from tests.support.server import running_server


@pytest.fixture
def tarpit() -> Iterator[int]:
    """A TCP port that accepts connections and never says anything (a registry that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def status(client: httpx.Client, build_id: str) -> str:
    return str(client.get(f"/v1/templates/builds/{build_id}").json()["build"]["status"])


def wait_until(check: object, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached (liveness bound)"
        time.sleep(0.1)


def test_the_other_namespace_starts_within_one_worker_slot(tmp_path: Path, tarpit: int) -> None:
    body = {"base_image": f"127.0.0.1:{tarpit}/slow/image:1"}
    guest_root = get_settings().data_dir.resolve()
    ensure_guest(guest_root)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "guest").symlink_to(guest_root / "guest")
    with running_server(tmp_path / "s", workers=1) as server:
        busy_key, other_key = server.create_key("busy"), server.create_key("other")
        with server.client(busy_key) as busy, server.client(other_key) as other:
            queued = []
            for i in range(5):
                accepted = busy.post("/v1/templates/builds", json={**body, "name": f"slow-{i}"})
                assert accepted.status_code == 202, accepted.text
                queued.append(accepted.json()["build_id"])
            wait_until(lambda: status(busy, queued[0]) == "building")
            mine = other.post("/v1/templates/builds", json={**body, "name": "mine"}).json()["build_id"]
            assert status(other, mine) == "waiting"
            assert busy.post(f"/v1/templates/builds/{queued[0]}/cancel", json={}).status_code == 200  # slot freed
            wait_until(lambda: status(other, mine) != "waiting")
            assert [status(busy, b) for b in queued[1:]] == ["waiting"] * 4  # none of the other four went first
            for client, build_id in [(other, mine), *((busy, b) for b in queued[1:])]:
                client.post(f"/v1/templates/builds/{build_id}/cancel", json={})
