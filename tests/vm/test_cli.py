"""`amber vm run / snapshot / restore` as a person uses them (real processes, real VMs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def amber(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMBER_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "amber.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the host\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def host_http() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    thread.join()


def test_vm_run_with_network_streams_output_and_exits_with_the_status(
    busybox_disk: Path, data_dir: Path, host_http: int
) -> None:
    done = amber(data_dir, "vm", "run", str(busybox_disk), "--memory", "192", "--cpus", "2", "--network", "--",
                 "sh", "-c", f"wget -qO- http://10.0.2.2:{host_http}/ && nproc && free -m | grep -o 'Mem: *[0-9]*' "
                             "&& echo to-stderr >&2 && exit 7")
    assert done.returncode == 7, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["hello from the host", "2"]
    assert 150 <= int(lines[2].split()[1]) <= 192  # guest-visible RAM: 192 MiB minus the kernel's share
    assert "to-stderr" in done.stderr and "booting the VM: done in" in done.stderr


def test_vm_snapshot_then_restore(busybox_disk: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    done = amber(data_dir, "vm", "snapshot", str(busybox_disk), "--memory", "192", "--out", str(out),
                 "--start-cmd", "echo 41 > /dev/shm/v; exec httpd -f -p 8080 -h /www", "--ready-tcp", "8080")
    assert done.returncode == 0, done.stderr
    assert "snapshot written to" in done.stdout and (out / "manifest.json").exists()
    done = amber(data_dir, "vm", "restore", str(out), "--", "sh", "-c", "cat /dev/shm/v; pidof httpd >/dev/null")
    assert (done.returncode, done.stdout) == (0, "41\n"), done.stderr
    done = amber(data_dir, "vm", "restore", str(tmp_path / "missing"), "--", "true")
    assert done.returncode == 1 and "does not exist" in done.stderr
    done = amber(data_dir, "vm", "run", str(busybox_disk), "--", "/no/such/command")
    assert done.returncode == 127 and "No such file" in done.stderr
