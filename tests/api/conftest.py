"""API tests drive a real ``amber serve`` over HTTP (one server per module and database backend) with no
build workers, so accepted builds stay ``waiting`` until a test cancels them; finished templates are seeded
through the store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.server import AmberServer, running_server


@dataclass
class Api:
    server: AmberServer
    database_url: str
    acme: httpx.Client  # key in namespace "acme"
    acme2: httpx.Client  # a second key of the same namespace
    other: httpx.Client  # key in namespace "other"
    anonymous: httpx.Client  # no Authorization header

    def with_key(self, key: str) -> httpx.Client:
        return self.server.client(key)


@pytest.fixture(scope="module")
def api(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data_dir: Path = tmp_path_factory.mktemp("amber-api")
    env = {"AMBER_SSE_HEARTBEAT_SECS": "1", "AMBER_CLAIM_TTL_SECS": "600"}
    with running_server(data_dir, database_url, workers=0, env=env) as server:
        clients = [server.client(server.create_key(ns)) for ns in ("acme", "acme", "other")]
        anonymous = httpx.Client(base_url=server.url, timeout=30)
        try:
            yield Api(server, database_url, clients[0], clients[1], clients[2], anonymous)
        finally:
            for c in [*clients, anonymous]:
                c.close()
