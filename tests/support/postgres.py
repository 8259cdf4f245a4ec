"""A throwaway PostgreSQL 15 server from Debian's binaries (``initdb`` + ``postgres``) on a free loopback port.

Runs as the ``postgres`` system user when the tests run as root (PostgreSQL refuses root), with fsync off
and trust authentication on 127.0.0.1 only. Stopped by its PID (SIGINT = fast shutdown, then SIGKILL) and
its directory removed, also when a test fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.registry import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PostgresServer:
    port: int
    pid: int
    root: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _require_postgres() -> None:
    for binary in ("initdb", "postgres"):
        if not (PG_BIN / binary).exists():
            raise RuntimeError(f"{PG_BIN / binary} is missing: install the Debian package postgresql-15 "
                               "(scripts/setup.sh does)")


def _run_as() -> dict[str, str]:
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root needs the 'postgres' system user (created by the Debian postgresql "
                           "package)") from None
    return {"user": "postgres", "group": "postgres"}


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    _require_postgres()
    as_user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="amber-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if as_user:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120, **as_user,  # type: ignore[call-overload]
        )
        port = free_port()
        log = open(root / "postgres.log", "wb")  # noqa: SIM115 - closed with the process below
        proc = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(sock),
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            stdout=log, stderr=subprocess.STDOUT, **as_user,  # type: ignore[call-overload]
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            ready = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                   capture_output=True)
            if ready.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {(root / 'postgres.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield PostgresServer(port=port, pid=proc.pid, root=root)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)
