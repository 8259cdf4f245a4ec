"""API benchmark: build-status polling under 200 concurrent clients and 500 concurrent SSE log followers.

Runs a real ``amber serve`` (SQLite, no build workers) on loopback and prints:
- status polls per second and p50/p99 latency with 200 concurrent clients (``GET /v1/templates/builds/{id}``),
  next to the same load against a bare uvicorn app that returns a constant JSON body of the same size — the
  floor any Python ASGI service on this machine has — and the ratio between the two;
- 500 concurrent SSE followers of one build: time until all are connected, time from a cancel until all 500
  received the terminal entry, and the server's RSS with 500 open streams.

Bounded: a fixed number of requests per client, loopback only, every process stopped by PID at the end.
The load generator shares the machine's cores with the server, so absolute numbers are pessimistic.
Usage: ``.venv/bin/python bench/api.py [--clients 200] [--requests 20] [--followers 500]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
AMBER = [sys.executable, "-m", "amber.cli"]
BARE_APP = """
import sys
body = open(sys.argv[1], "rb").read()
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def poll_load(url: str, headers: dict[str, str], clients: int, requests: int) -> tuple[float, list[float]]:
    """``clients`` concurrent pollers, ``requests`` each. Returns (polls per second, latencies in ms)."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as client:

        async def one() -> None:
            for _ in range(requests):
                t0 = time.perf_counter()
                resp = await client.get(url)
                latencies.append((time.perf_counter() - t0) * 1000)
                assert resp.status_code == 200, resp.text

        await one()  # warm up the connection pool and caches
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def sse_fanout(base: str, headers: dict[str, str], build_id: str, followers: int, pid: int) -> None:
    connected = asyncio.Semaphore(0)
    done_at: list[float] = []
    limits = httpx.Limits(max_connections=followers + 10, max_keepalive_connections=followers + 10)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=120) as client:

        async def follow() -> None:
            async with client.stream("GET", f"/v1/templates/builds/{build_id}/logs",
                                     params={"follow": "true", "offset": 0}) as resp:
                first = True
                async for line in resp.aiter_lines():
                    if line.startswith("data: ") and first:
                        first = False
                        connected.release()
                    if line.startswith("data: ") and '"kind":"cancelled"' in line:
                        done_at.append(time.perf_counter())
                        return

        started = time.perf_counter()
        tasks = [asyncio.create_task(follow()) for _ in range(followers)]
        for _ in range(followers):
            await connected.acquire()
        all_connected = time.perf_counter() - started
        rss = rss_mib(pid)
        t0 = time.perf_counter()
        resp = await client.post(f"/v1/templates/builds/{build_id}/cancel", json={"reason": "bench"})
        assert resp.status_code == 200
        await asyncio.gather(*tasks)
        fanout = max(done_at) - t0
    print(f"sse: {followers} followers connected in {all_connected:.2f} s; server RSS with them open: {rss:.0f} MiB")
    print(f"sse: cancel -> terminal entry delivered to all {len(done_at)} followers in {fanout * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=20, help="status polls per client")
    parser.add_argument("--followers", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="amber-bench-api-") as tmp:
        data = Path(tmp)
        env = {**os.environ, "AMBER_DATA_DIR": str(data), "AMBER_SSE_HEARTBEAT_SECS": "10",
               "AMBER_RATE_LIMIT_PER_SEC": "0"}  # measures throughput, not the per-key limiter
        env.pop("AMBER_DATABASE_URL", None)
        key = subprocess.run([*AMBER, "keys", "create", "--namespace", "bench"], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(data / "server.log", "wb")  # noqa: SIM115 - closed at exit
        server = subprocess.Popen([*AMBER, "serve", "--port", str(port), "--workers", "0"], env=env,
                                  stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        bare: subprocess.Popen[bytes] | None = None
        try:
            wait_up(base + "/openapi.json", server)
            headers = {"Authorization": f"Bearer {key}"}
            body = {"name": "bench", "base_image": "127.0.0.1:1/bench:latest",
                    "steps": [{"action": "run", "command": "true"}]}
            build_id = httpx.post(base + "/v1/templates/builds", json=body, headers=headers).json()["build_id"]
            status_url = f"{base}/v1/templates/builds/{build_id}?offset=0"
            snapshot = httpx.get(status_url, headers=headers).content
            print(f"server pid {server.pid}, RSS idle {rss_mib(server.pid):.0f} MiB, snapshot {len(snapshot)} bytes")

            rate, lat = asyncio.run(poll_load(status_url, headers, args.clients, args.requests))
            print(f"amber status polls: {rate:.0f}/s with {args.clients} clients, p50 {p(lat, 50):.1f} ms, "
                  f"p99 {p(lat, 99):.1f} ms, RSS {rss_mib(server.pid):.0f} MiB")

            snapshot_file = data / "snapshot.json"
            snapshot_file.write_bytes(snapshot)
            bare_port = free_port()
            bare = subprocess.Popen([sys.executable, "-c", BARE_APP, str(snapshot_file), str(bare_port)])
            wait_up(f"http://127.0.0.1:{bare_port}/", bare)
            bare_rate, bare_lat = asyncio.run(poll_load(f"http://127.0.0.1:{bare_port}/", {}, args.clients,
                                                        args.requests))
            print(f"bare uvicorn constant JSON: {bare_rate:.0f}/s, p50 {p(bare_lat, 50):.1f} ms, "
                  f"p99 {p(bare_lat, 99):.1f} ms")
            print(f"ratio amber/bare: {rate / bare_rate:.2f}x throughput, {p(lat, 99) / p(bare_lat, 99):.2f}x p99")
            stop(bare)

            asyncio.run(sse_fanout(base, headers, build_id, args.followers, server.pid))
            print(f"server RSS after the streams closed: {rss_mib(server.pid):.0f} MiB")
        finally:
            if bare is not None:
                stop(bare)
            stop(server)
            log.close()


if __name__ == "__main__":
    main()
