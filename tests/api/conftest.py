"""API tests drive a real ``amber serve`` over HTTP (one server per database backend for the package) with no
build workers, so accepted builds stay ``waiting`` until a test cancels them; finished templates are seeded
through the store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from amber.store import keys
from amber.store.database import Database
from tests.support.postgres import PostgresServer
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


def store_keys(database_url: str, namespaces: list[str]) -> list[str]:
    """Keys made by the store function behind `amber keys create` (the CLI itself is tested separately; this
    saves a Python start-up per key)."""
    db = Database(database_url)
    try:
        with db.session() as session:
            return [keys.create_api_key(session, ns) for ns in namespaces]
    finally:
        db.dispose()


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def api_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Like the root ``database_url`` but shared by the whole package: one server per backend for all API tests."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'amber.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"amber_api_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="package")
def api(api_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data_dir: Path = tmp_path_factory.mktemp("amber-api")
    env = {"AMBER_SSE_HEARTBEAT_SECS": "1", "AMBER_CLAIM_TTL_SECS": "600"}
    with running_server(data_dir, api_database_url, workers=0, env=env) as server:
        clients = [server.client(key) for key in store_keys(api_database_url, ["acme", "acme", "other"])]
        anonymous = httpx.Client(base_url=server.url, timeout=30)
        try:
            yield Api(server, api_database_url, clients[0], clients[1], clients[2], anonymous)
        finally:
            for c in [*clients, anonymous]:
                c.close()
