"""Fixtures shared across test packages: a session-wide throwaway PostgreSQL server and a per-module database
URL parametrised over SQLite and PostgreSQL (the store, API and contract suites run against both)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.network import HostListener, OutsideWorld
from tests.support.postgres import PostgresServer, running_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty database: a SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'amber.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"amber_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[OutsideWorld]:
    """A network namespace standing for the internet (``tests.support.network``), removed afterwards."""
    with OutsideWorld(tmp_path) as world:
        yield world


@pytest.fixture
def host_listener() -> Iterator[HostListener]:
    """Listeners on the host's loopback and other addresses that record every connection they get."""
    with HostListener() as listener:
        yield listener
