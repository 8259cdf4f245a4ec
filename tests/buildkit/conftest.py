"""Fixtures for the BuildKit tests: one real dockerd (started here, stopped by PID) and real loopback
registries with busybox images pushed by the tests themselves."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from amber.buildkit.daemon import DAEMON_PATH, DOCKERD, ManagedDockerd
from amber.buildkit.session import RegistryCredential
from tests.support.images import push_busybox_image
from tests.support.registry import Registry, registry_htpasswd, registry_noauth, registry_token

__all__ = ["registry_htpasswd", "registry_noauth", "registry_token"]


@pytest.fixture(scope="module")  # stopped as soon as the module that needs it is done
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedDockerd]:
    if not DOCKERD.exists():
        raise RuntimeError(f"{DOCKERD} is missing: install the Debian package docker.io (scripts/setup.sh does)")
    if os.geteuid() != 0:
        raise RuntimeError("the BuildKit tests start dockerd and need root")
    # AMBER_TEST_DOCKERD / AMBER_TEST_DOCKERD_PATH run the suite against another dockerd build (e.g. Debian 13's
    # 26.x unpacked from its .deb, see docs/buildkit.md); the default is the Debian 12 package.
    binary = Path(os.environ.get("AMBER_TEST_DOCKERD", str(DOCKERD)))
    search_path = os.environ.get("AMBER_TEST_DOCKERD_PATH", DAEMON_PATH)
    daemon = ManagedDockerd(tmp_path_factory.mktemp("dockerd"), dockerd=binary, path=search_path)
    asyncio.run(daemon.ensure_running())
    try:
        yield daemon
    finally:
        asyncio.run(daemon.stop())


@dataclass(frozen=True)
class Images:
    """Busybox images on the three registries; private ones need the registry's credentials."""

    public: str  # no-auth registry
    htpasswd: str  # everything needs credentials
    token_private: str  # token registry, private/ repository
    htpasswd_registry: Registry
    token_registry: Registry

    def credential(self, registry: Registry) -> RegistryCredential:
        assert registry.credentials is not None
        return RegistryCredential(*registry.credentials)


@pytest.fixture(scope="session")
def images(registry_noauth: Registry, registry_htpasswd: Registry, registry_token: Registry) -> Images:
    return Images(
        public=push_busybox_image(registry_noauth, "team/busybox"),
        htpasswd=push_busybox_image(registry_htpasswd, "private/busybox"),
        token_private=push_busybox_image(registry_token, "private/busybox"),
        htpasswd_registry=registry_htpasswd,
        token_registry=registry_token,
    )


@dataclass(frozen=True)
class ContextFile:
    """A build_context.files entry shaped like the API's model."""

    path: str
    entry_type: str = "file"
    content_base64: str | None = None
    blob_id: str | None = None
    mode: str | None = None

    @staticmethod
    def text(path: str, text: str, mode: str | None = None) -> ContextFile:
        return ContextFile(path, content_base64=base64.b64encode(text.encode()).decode(), mode=mode)


def scan_for(root: Path, needles: list[bytes]) -> list[str]:
    """Every file under ``root`` containing one of ``needles`` (symlinks and special files skipped)."""
    found: list[str] = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                found.append(str(path))
    return found
