"""Benchmark: file transfers, relays and long-lived jobs through the guest agent, against the naive paths.

Files: 16 MiB of random bytes written with ``write_file_chunks`` (1 MiB frames, a few in flight) and read
back with ``read_file_chunks``, against the naive path through a command (``exec(["sh", "-c", "cat >
f"], stdin=…)`` and ``exec(["cat", f])``, the whole file in host memory). Relay: an HTTP GET of a small page
from busybox httpd in the guest through ``relay(port)`` against the agent's own ``http_probe``. Jobs:
start → first output → exit of ``echo`` through ``start`` (reader-thread callbacks) against ``exec``.
Target files live on the guest's tmpfs (/dev/shm) so the disk does not blur the channel. 512 MiB guest,
1 vCPU, median of N with min-max. Not a pass/fail test; targets are printed alongside.

Run: ``.venv/bin/python bench/agent.py [-n 5]`` as root, after ``make setup``, under the heavy lock.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.busybox import make_busybox_tree
from tests.vm.conftest import make_disk

from amber.guest.install import ensure_guest
from amber.settings import get_settings
from amber.vm import MicroVM, boot, resolve_accel

SIZE = 16 << 20
MB = 1e6


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"


def rate(values: list[float]) -> float:
    return SIZE / statistics.median(values) / MB


def timed(fn: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def read_into(vm: MicroVM, h: hashlib._Hash) -> None:
    for chunk in vm.agent.read_file_chunks("/dev/shm/f"):
        h.update(chunk)


def start_and_wait(vm: MicroVM) -> None:
    done = threading.Event()
    vm.agent.start(["echo", "hi"], on_exit=lambda _j: done.set())
    done.wait(30)


def files(vm: MicroVM, n: int, data: bytes) -> dict[str, list[float]]:
    digest = hashlib.sha256(data).hexdigest()
    out: dict[str, list[float]] = {"write": [], "read": [], "naive write": [], "naive read": []}
    chunks = [data[i:i + (256 << 10)] for i in range(0, len(data), 256 << 10)]  # as an HTTP body arrives
    for _ in range(n):
        out["write"].append(timed(lambda: vm.agent.write_file_chunks("/dev/shm/f", iter(chunks))))
        got = hashlib.sha256()
        out["read"].append(timed(read_into, vm, got))
        assert got.hexdigest() == digest
        out["naive write"].append(timed(lambda: vm.exec(["sh", "-c", "cat > /dev/shm/g"], stdin=data)))
        res: list[bytes] = []
        out["naive read"].append(timed(lambda: res.append(vm.exec(["cat", "/dev/shm/g"]).stdout)))  # noqa: B023
        assert hashlib.sha256(res[0]).hexdigest() == digest
    vm.exec(["rm", "-f", "/dev/shm/f", "/dev/shm/g"])
    return out


def relay_get(vm: MicroVM, port: int) -> bytes:
    got = bytearray()
    job = vm.agent.relay(port, on_stdout=got.extend)
    job.wait_started(30)
    job.send_stdin(b"GET /index.html HTTP/1.0\r\n\r\n")
    job.close_stdin()
    job.wait(30)
    return bytes(got)


def jobs_and_relays(vm: MicroVM, n: int) -> dict[str, list[float]]:
    server = vm.agent.start(["httpd", "-f", "-p", "8140", "-h", "/www"])
    server.wait_started(30)
    deadline = time.monotonic() + 60
    while True:
        try:
            vm.agent.tcp_probe(8140)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    out: dict[str, list[float]] = {"relay GET": [], "http_probe": [], "start→exit": [], "exec": []}
    for _ in range(max(n, 10)):
        out["relay GET"].append(timed(lambda: relay_get(vm, 8140)))
        out["http_probe"].append(timed(lambda: vm.agent.http_probe(8140, "/index.html")))
        out["start→exit"].append(timed(start_and_wait, vm))
        out["exec"].append(timed(lambda: vm.exec(["echo", "hi"])))
    server.signal(9)
    server.wait(30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="iterations per measurement")
    args = parser.parse_args()
    data_dir = get_settings().data_dir.resolve()
    ensure_guest(data_dir)
    with tempfile.TemporaryDirectory(prefix="amber-bench-agent-") as tmp:
        tree = make_busybox_tree(Path(tmp) / "tree")
        (tree / "www").mkdir()
        (tree / "www" / "index.html").write_text("hello from the guest\n")
        disk = make_disk(tree, Path(tmp) / "busybox.ext4")
        data = os.urandom(SIZE)
        with boot(disk, data_dir=data_dir, memory_mib=512) as vm:
            vm.exec(["true"])  # warm the translation cache for the agent's paths
            f = files(vm, args.n, data)
            j = jobs_and_relays(vm, args.n)
    print(f"amber agent benchmark: accel={resolve_accel(None)}, 512 MiB guest, 1 vCPU, n={args.n}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'':34} {'median (min-max)':28} {'MB/s':>7}  target")
    for name, target in (("write", "≥ 30 MB/s"), ("read", "≥ 100 MB/s"), ("naive write", ""), ("naive read", "")):
        print(f"16 MiB {name:27} {med(f[name]):28} {rate(f[name]):7.1f}  {target}")
    for name in ("relay GET", "http_probe", "start→exit", "exec"):
        print(f"{name:34} {med(j[name]):28}")
    print(f"ratios: write {rate(f['write']) / rate(f['naive write']):.2f}x naive, "
          f"read {rate(f['read']) / rate(f['naive read']):.2f}x naive, "
          f"relay GET / http_probe {statistics.median(j['relay GET']) / statistics.median(j['http_probe']):.2f}, "
          f"start→exit / exec {statistics.median(j['start→exit']) / statistics.median(j['exec']):.2f}")


if __name__ == "__main__":
    main()
