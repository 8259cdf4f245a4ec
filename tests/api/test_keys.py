"""`amber keys list` and `amber keys revoke` (issue 11): listings never show a key; a revoked key is refused
(401) within a second by every serving process, also by two processes sharing one PostgreSQL database."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from tests.support.postgres import PostgresServer
from tests.support.server import AMBER, AmberServer, running_server


def keys_cli(server: AmberServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AMBER, "keys", *args], env=server.env, capture_output=True, text=True, timeout=120)


def listing(server: AmberServer) -> dict[str, dict[str, str | None]]:
    done = keys_cli(server, "list", "--json")
    assert done.returncode == 0, done.stderr
    return {row["id"]: row for row in map(json.loads, done.stdout.splitlines())}


def seconds_until_refused(clients: list[httpx.Client], limit: float = 10.0) -> list[float]:
    """For each client, how long after now its first 401 came (polled every 20 ms)."""
    started = time.monotonic()
    refused: dict[int, float] = {}
    while len(refused) < len(clients) and time.monotonic() - started < limit:
        for i, client in enumerate(clients):
            if i not in refused and client.get("/v1/templates").status_code == 401:
                refused[i] = time.monotonic() - started
        time.sleep(0.02)
    return [refused.get(i, float("inf")) for i in range(len(clients))]


def test_list_shows_keys_without_the_key_and_revoke_by_prefix_or_id(tmp_path: Path) -> None:
    with running_server(tmp_path / "a", workers=0) as server:
        first, second = server.create_key("acme"), server.create_key("other")
        with server.client(first) as client:
            assert client.get("/v1/templates").status_code == 200
        done = keys_cli(server, "list")
        assert done.returncode == 0 and first not in done.stdout and second not in done.stdout
        assert first[:12] in done.stdout and second[:12] in done.stdout and first[:13] not in done.stdout
        rows = listing(server)
        by_prefix = {row["prefix"]: row for row in rows.values()}
        acme, other = by_prefix[first[:12]], by_prefix[second[:12]]
        assert acme["namespace"] == "acme" and other["namespace"] == "other"
        assert acme["last_used_at"] is not None and other["last_used_at"] is None  # only the first was used
        assert acme["revoked_at"] is None and str(acme["id"]).startswith("key_")
        assert json.dumps(rows).count("amber_") == 2  # the two 12-character prefixes, nothing more of a key

        refused = keys_cli(server, "revoke", "amber_")  # too short to name one key
        assert refused.returncode == 1 and "at least 8" in refused.stderr
        unknown = keys_cli(server, "revoke", "key_0000000000000000")
        assert unknown.returncode == 1 and "no API key matches" in unknown.stderr

        revoked = keys_cli(server, "revoke", first[:10])
        assert revoked.returncode == 0 and str(acme["id"]) in revoked.stdout and first not in revoked.stdout
        by_id = keys_cli(server, "revoke", str(other["id"]))
        assert by_id.returncode == 0, by_id.stderr
        with server.client(first) as a, server.client(second) as b:
            assert max(seconds_until_refused([a, b])) < 1.0
            assert a.get("/v1/templates").json()["code"] == "unauthorized"
        after = listing(server)
        assert after[str(acme["id"])]["revoked_at"] is not None and after[str(other["id"])]["revoked_at"] is not None
        again = keys_cli(server, "revoke", first)  # the whole key works too; revoking twice is harmless
        assert again.returncode == 0 and listing(server)[str(acme["id"])]["revoked_at"] == after[str(acme["id"])][
            "revoked_at"]


def test_a_revoked_key_is_refused_within_a_second_by_two_servers_sharing_postgresql(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database(f"amber_keys_{uuid.uuid4().hex[:8]}")
    with running_server(tmp_path / "a", url, workers=0) as a, running_server(tmp_path / "b", url, workers=0) as b:
        key = a.create_key("acme")
        with a.client(key) as on_a, b.client(key) as on_b:
            for _ in range(3):  # both processes have verified (and cached) the key
                assert on_a.get("/v1/templates").status_code == 200
                assert on_b.get("/v1/templates").status_code == 200
            revoked = keys_cli(b, "revoke", key[:12])
            assert revoked.returncode == 0, revoked.stderr
            waits = seconds_until_refused([on_a, on_b])
            assert max(waits) < 1.0, waits
            assert on_a.get("/v1/templates").status_code == 401 and on_b.get("/v1/templates").status_code == 401
