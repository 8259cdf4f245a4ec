"""A real ``amber serve`` subprocess on a free loopback port with its own data directory and API keys.

``running_server()`` runs ``amber keys create`` (the printed key is the only stdout) and ``amber serve``,
waits until the port answers, and stops the server by its PID on exit (SIGTERM, then SIGKILL). ``kill()``
simulates a crash (SIGKILL) and ``start()`` starts it again on the same port and data directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.registry import free_port

AMBER = [sys.executable, "-m", "amber.cli"]
_START_TIMEOUT_S = 60.0


class AmberServer:
    def __init__(
        self, data_dir: Path, database_url: str | None = None, workers: int = 1, env: dict[str, str] | None = None,
        start_timeout: float = _START_TIMEOUT_S,
    ) -> None:
        self.start_timeout = start_timeout  # a fresh data directory's first start builds the guest first
        self.extra_env = dict(env or {})
        self.data_dir = data_dir
        self.database_url = database_url
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AMBER_", "NULLSPACE_"))}
        env["AMBER_DATA_DIR"] = str(self.data_dir)
        if self.database_url:
            env["AMBER_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def create_key(self, namespace: str = "default") -> str:
        out = subprocess.run([*AMBER, "keys", "create", "--namespace", namespace], env=self.env,
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the subprocess for its lifetime
        self.proc = subprocess.Popen(
            [*AMBER, "serve", "--port", str(self.port), "--workers", str(self.workers)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                httpx.get(self.url + "/openapi.json", timeout=1.0)
                return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"amber serve did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as in a crash; nothing gets to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def client(self, key: str, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


@contextmanager
def running_server(
    data_dir: Path, database_url: str | None = None, workers: int = 1, env: dict[str, str] | None = None,
    start_timeout: float = _START_TIMEOUT_S,
) -> Iterator[AmberServer]:
    server = AmberServer(data_dir, database_url, workers, env, start_timeout)
    try:
        server.start()
        yield server
    finally:
        server.stop()
