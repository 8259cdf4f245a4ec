"""Contract tests: the unmodified ``nullspace-sdk==1.0.3`` drives a real ``amber serve`` (real QEMU builds of a
busybox image from a loopback ``docker-registry``), once on SQLite and once on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import pytest

from amber.builds.builtin import ensure_builtin
from amber.guest.install import ensure_guest
from amber.settings import get_settings
from amber.vm import sweep_stale
from tests.support.images import push_busybox_image
from tests.support.registry import Registry, running_registry
from tests.support.server import AmberServer, running_server


class Conn(TypedDict):
    """SDK connection keywords: ``Template.get(ref, **conn)``."""

    api_key: str
    base_url: str


@dataclass
class Sdk:
    """Connection settings for SDK calls: pass ``**sdk.acme`` (``api_key``/``base_url``) to any SDK call."""

    server: AmberServer
    base_image: str
    acme_key: str
    other_key: str

    @property
    def acme(self) -> Conn:
        return {"api_key": self.acme_key, "base_url": self.server.url}

    @property
    def other(self) -> Conn:
        return {"api_key": self.other_key, "base_url": self.server.url}


def data_dir_with_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh data directory sharing the repository's guest kernel/agent and builtin templates (built once by
    `amber setup-guest` and `amber setup-base`; a server on it registers nullspace/base)."""
    guest_root = get_settings().data_dir.resolve()
    ensure_guest(guest_root)
    ensure_builtin(guest_root)
    d = tmp_path_factory.mktemp("amber-contract")
    (d / "guest").symlink_to(guest_root / "guest")
    (d / "builtin").symlink_to(guest_root / "builtin")
    return d


def leftover_vms(data_dir: Path) -> list[Path]:
    run = data_dir / "run"
    return sorted(run.glob("vm-*")) if run.exists() else []


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with running_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    """Extra ``AMBER_*`` settings for the module's server (a module overrides this fixture to add some)."""
    return {}


@pytest.fixture(scope="module")
def sdk(
    database_url: str, registry: Registry, server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sdk]:
    data_dir = data_dir_with_guest(tmp_path_factory)
    base = push_busybox_image(registry)
    env = {"AMBER_SSE_HEARTBEAT_SECS": "2", **server_env}
    with running_server(data_dir, database_url, workers=1, env=env) as server:
        yield Sdk(server, base, server.create_key("acme"), server.create_key("other"))
    sweep_stale(data_dir)
    assert not leftover_vms(data_dir), "VM run directories left behind"


def unique(prefix: str) -> str:
    """A template name no other test of the session uses."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
