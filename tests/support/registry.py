"""A real Debian ``docker-registry`` (distribution 2.8) on a free 127.0.0.1 port, in three auth modes.

Use the context manager :func:`running_registry` or the session-scoped pytest fixtures
``registry_noauth``, ``registry_htpasswd`` and ``registry_token`` (import them into your conftest.py:
``from tests.support.registry import registry_noauth, registry_htpasswd, registry_token``).

Every registry serves plain HTTP on loopback, stores its blobs in a temporary directory and is stopped by
its PID on exit (also when the test fails). In the htpasswd and token modes ``REGISTRY_USER`` /
``REGISTRY_PASSWORD`` can pull and push everything; in token mode anonymous clients may pull any
repository not under ``private/``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import bcrypt
import httpx
import pytest

from tests.support.token_server import TokenServer, running_token_server

REGISTRY_BINARY = "/usr/bin/docker-registry"
REGISTRY_USER = "amber-user"
REGISTRY_PASSWORD = "amber-secret-pw"
_START_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


class RegistryMode(StrEnum):
    NOAUTH = "noauth"
    HTPASSWD = "htpasswd"
    TOKEN = "token"


@dataclass(frozen=True)
class Registry:
    """A running registry. ``host`` is ``127.0.0.1:PORT``; images are ``f"{host}/{repo}:{tag}"``."""

    mode: RegistryMode
    host: str
    pid: int
    root: Path
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        """The admin (pull + push) credentials, or None for the no-auth registry."""
        if self.username is None or self.password is None:
            return None
        return self.username, self.password

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"{self.host}/{repo}:{tag}"

    @property
    def storage(self) -> Path:
        """Where the registry keeps blobs (``docker/registry/v2/blobs/sha256/xx/<hex>/data``)."""
        return self.root / "data"

    def blob_path(self, digest: str) -> Path:
        """The on-disk file of a stored blob (tests tamper with it to provoke digest mismatches)."""
        algorithm, hex_digest = digest.split(":", 1)
        return self.storage / "docker/registry/v2/blobs" / algorithm / hex_digest[:2] / hex_digest / "data"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _require_registry() -> None:
    if not Path(REGISTRY_BINARY).exists():
        raise RuntimeError(
            f"{REGISTRY_BINARY} is missing: install the Debian package docker-registry (scripts/setup.sh does)"
        )


def _config(root: Path, port: int, auth_yaml: str) -> str:
    return (
        "version: 0.1\n"
        "log: {level: warn, fields: {service: amber-test-registry}}\n"
        "storage:\n"
        f"  filesystem: {{rootdirectory: {root / 'data'}}}\n"
        "  delete: {enabled: true}\n"
        "  cache: {blobdescriptor: inmemory}\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        "  headers: {X-Content-Type-Options: [nosniff]}\n" + auth_yaml
    )


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            # 200 without auth, 401 with it: either way the registry is serving.
            if httpx.get(f"{url}/v2/", timeout=1.0).status_code in (200, 401):
                time.sleep(0.05)  # an answer from someone else's server on this port would leave ours dead
                if proc.poll() is None:
                    return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"docker-registry did not answer on {url} within {_START_TIMEOUT_S}s: {log.read_text()}")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so a killed pytest leaves no registry behind."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@contextmanager
def running_registry(mode: RegistryMode | str = RegistryMode.NOAUTH, root: Path | None = None) -> Iterator[Registry]:
    """Start a registry in ``mode`` on a free loopback port; stop it (by PID) and remove its data on exit."""
    _require_registry()
    mode = RegistryMode(mode)
    with ExitStack() as stack:
        if root is None:
            root = Path(tempfile.mkdtemp(prefix=f"amber-registry-{mode}-"))
            stack.callback(shutil.rmtree, root, True)
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        username: str | None = None
        password: str | None = None
        token_server: TokenServer | None = None
        auth = ""
        if mode is RegistryMode.HTPASSWD:
            username, password = REGISTRY_USER, REGISTRY_PASSWORD
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            (root / "htpasswd").write_text(f"{username}:{hashed}\n")  # bcrypt: the only kind distribution accepts
            auth = f"auth:\n  htpasswd: {{realm: amber-test-realm, path: {root / 'htpasswd'}}}\n"
        elif mode is RegistryMode.TOKEN:
            username, password = REGISTRY_USER, REGISTRY_PASSWORD
            token_server = stack.enter_context(running_token_server({username: password}))
            cert = token_server.write_certificate(root / "token-cert.pem")
            auth = (
                "auth:\n  token:\n"
                f"    realm: {token_server.realm}\n"
                f"    service: {token_server.service}\n"
                f"    issuer: {token_server.issuer}\n"
                f"    rootcertbundle: {cert}\n"
            )
        config = root / "config.yml"
        log = root / "registry.log"
        for attempt in range(3):  # the free port may be taken between our probe and the registry's bind
            config.write_text(_config(root, port, auth))
            with log.open("wb") as log_file:
                proc = subprocess.Popen(
                    [REGISTRY_BINARY, "serve", str(config)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                )
            url = f"http://127.0.0.1:{port}"
            try:
                _wait_ready(url, proc, log)
                break
            except RuntimeError:
                _stop(proc)
                if attempt == 2 or "address already in use" not in log.read_text():
                    raise
                port = free_port()
        stack.callback(_stop, proc)
        yield Registry(mode, f"127.0.0.1:{port}", proc.pid, root, username, password, token_server)


@pytest.fixture(scope="session")
def registry_noauth() -> Iterator[Registry]:
    with running_registry(RegistryMode.NOAUTH) as registry:
        yield registry


@pytest.fixture(scope="session")
def registry_htpasswd() -> Iterator[Registry]:
    with running_registry(RegistryMode.HTPASSWD) as registry:
        yield registry


@pytest.fixture(scope="session")
def registry_token() -> Iterator[Registry]:
    with running_registry(RegistryMode.TOKEN) as registry:
        yield registry
