"""Benchmark: machines from a template, through the real HTTP API, against what a user would otherwise do.

One run, on this host's accelerator (TCG here), with a real ``amber serve``, a busybox template (httpd as its
start command, 2 vCPUs / 512 MiB) built by that server:

- create → 201 from the cached template (one at a time, and 5 at once) vs a cold boot of the same disk to a
  running agent (what a sandbox without snapshots pays);
- exec round trip through HTTP vs a bare agent call on a directly restored VM;
- file write/read throughput through ``PUT``/``GET /file`` vs ``cat`` through the agent;
- hibernate and resume;
- idle machines: RSS and CPU per machine, measured up to ``--idle`` machines, extrapolated to how many idle
  512 MiB machines fit in 20 GiB;
- warm-pool checkout → 201 vs cold create; snapshot pause of the source; fork → child running; bytes a snapshot
  writes vs the machine's touched memory.

Targets on the 2-core dev machine (TCG): create p50 ≤ 0.3 s (≤ 0.1x cold boot), exec p50 ≤ 25 ms, hibernate
≤ 1 s, resume ≤ 0.3 s, ≥ 200 idle machines within 20 GiB, checkout p50 ≤ 50 ms (≤ 0.2x cold create), snapshot
pause ≤ 0.3 s, fork ≤ 0.5 s. Anchors (KVM, not reachable under TCG): E2B's published ~80 ms sandbox load and
Firecracker's snapshot restore in milliseconds.

Run: ``.venv/bin/python bench/machines.py [--runs 10] [--idle 64]`` as root after ``make setup``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import httpx  # noqa: E402
from nullspace import Template, TemplateWarmPool, wait_for_port  # noqa: E402
from tests.support.images import push_busybox_image  # noqa: E402
from tests.support.registry import running_registry  # noqa: E402
from tests.support.server import running_server  # noqa: E402

from amber.guest.install import ensure_guest  # noqa: E402
from amber.settings import get_settings  # noqa: E402
from amber.vm import TemplateArtifact, boot, restore  # noqa: E402

MIB = 1 << 20


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def qemu_pids(data_dir: Path) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"qemu-system" in (proc / "cmdline").read_bytes() and \
                        os.readlink(proc / "cwd").startswith(str(data_dir)):
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


def rss_and_ticks(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss, int(fields[11]) + int(fields[12])


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300)

    def create(self, template: str, **extra: object) -> tuple[str, float, dict[str, Any]]:
        started = time.monotonic()
        answer = self.http.post("/v1/machines", json={"template": template, "vcpus": 2, "memory_mb": 512, **extra},
                                headers={"Idempotency-Key": os.urandom(8).hex()})
        took = time.monotonic() - started
        assert answer.status_code == 201, answer.text
        body: dict[str, Any] = answer.json()
        return str(body["id"]), took, body

    def kill(self, machine_id: str) -> None:
        self.http.delete(f"/v1/machines/{machine_id}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle", type=int, default=64, help="idle machines to start for the capacity figure")
    args = parser.parse_args()
    guest_root = get_settings().data_dir.resolve()
    ensure_guest(guest_root)
    with tempfile.TemporaryDirectory(prefix="amber-bench-machines-") as tmp, running_registry() as registry:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        (data_dir / "guest").symlink_to(guest_root / "guest")
        base = push_busybox_image(registry)
        env = {"AMBER_MAX_MACHINES": str(args.idle + 16), "AMBER_WARM_POOL_MAX_PARKED": "4"}
        with running_server(data_dir, workers=1, env=env) as server:
            key = server.create_key("bench")
            conn = {"api_key": key, "base_url": server.url}
            template = Template.from_image(base).run_cmd("mkdir -p /workspace") \
                .set_start_cmd("httpd -f -p 8080 -h /workspace", wait_for_port(8080))
            Template.build(template, "bench:stable", **conn)  # type: ignore[arg-type]
            api = Api(server.url, key)
            artifact_dir = next(p for p in (data_dir / "artifacts").iterdir() if p.is_dir() and
                                (p / "manifest.json").is_file())
            run_all(api, args, data_dir, TemplateArtifact.load(artifact_dir), conn)


def run_all(api: Api, args: argparse.Namespace, data_dir: Path, artifact: TemplateArtifact,
            conn: dict[str, str]) -> None:
    template = "bench:stable"
    runs = args.runs
    print(f"host: {os.cpu_count()} cores, accel {artifact.description.accel}; template 2 vCPU / 512 MiB; "
          f"{runs} runs each\n")

    # -- create vs cold boot ----------------------------------------------------------------------------------
    api.kill(api.create(template)[0])  # warm the page cache of the artifact
    single = []
    for _ in range(runs):
        mid, took, _ = api.create(template)
        single.append(took)
        api.kill(mid)
    concurrent = []
    with ThreadPoolExecutor(5) as workers:
        for _ in range(max(1, runs // 3)):
            results = list(workers.map(lambda _: api.create(template), range(5)))
            concurrent += [r[1] for r in results]
            for r in results:
                api.kill(r[0])
    cold = []
    for _ in range(max(3, runs // 3)):
        started = time.monotonic()
        with boot(artifact.chain, data_dir=data_dir, cpus=2, memory_mib=512):
            cold.append(time.monotonic() - started)
    print(f"create → 201 (cached template), one at a time: p50 {ms(p50(single))}, p95 "
          f"{ms(sorted(single)[int(len(single) * 0.95) - 1])}")
    print(f"create → 201, 5 concurrent:                  p50 {ms(p50(concurrent))}, max {ms(max(concurrent))}")
    print(f"cold boot of the same disk to a running agent: p50 {ms(p50(cold))}   "
          f"ratio create/cold = {p50(single) / p50(cold):.3f}x\n")

    # -- exec --------------------------------------------------------------------------------------------------
    mid, _, _ = api.create(template)
    http_exec = []
    for _ in range(runs * 5):
        started = time.monotonic()
        answer = api.http.post(f"/v1/machines/{mid}/exec", json={"command": "true", "timeout_secs": 30})
        http_exec.append(time.monotonic() - started)
        assert answer.json()["exit_code"] == 0
    bare = []
    with restore(artifact, data_dir=data_dir) as vm:
        vm.exec(["true"])
        for _ in range(runs * 5):
            started = time.monotonic()
            vm.exec(["true"])
            bare.append(time.monotonic() - started)
        # -- files -----------------------------------------------------------------------------------------------
        payload = os.urandom(16 * MIB)
        started = time.monotonic()
        vm.exec(["sh", "-c", "cat > /tmp/cat.bin"], stdin=payload)
        cat_write = time.monotonic() - started
        started = time.monotonic()
        got = vm.exec(["cat", "/tmp/cat.bin"]).stdout
        cat_read = time.monotonic() - started
        assert got == payload
    print(f"exec round trip: HTTP p50 {p50(http_exec) * 1000:.1f} ms vs bare agent p50 {p50(bare) * 1000:.1f} ms   "
          f"ratio {p50(http_exec) / p50(bare):.2f}x")
    started = time.monotonic()
    answer = api.http.put(f"/v1/machines/{mid}/file", params={"path": "/tmp/put.bin"}, content=payload)
    put_secs = time.monotonic() - started
    assert answer.status_code == 204, answer.text
    started = time.monotonic()
    back = api.http.get(f"/v1/machines/{mid}/file", params={"path": "/tmp/put.bin"}).content
    get_secs = time.monotonic() - started
    assert back == payload
    mb = len(payload) / 1e6
    print(f"files 16 MiB: PUT {mb / put_secs:.0f} MB/s vs agent cat {mb / cat_write:.0f} MB/s "
          f"({cat_write / put_secs:.2f}x); GET {mb / get_secs:.0f} MB/s vs agent cat {mb / cat_read:.0f} MB/s "
          f"({cat_read / get_secs:.2f}x)\n")

    # -- hibernate / resume ------------------------------------------------------------------------------------
    hibernate, resume = [], []
    for _ in range(max(3, runs // 3)):
        started = time.monotonic()
        assert api.http.post(f"/v1/machines/{mid}/hibernate").status_code == 200
        hibernate.append(time.monotonic() - started)
        started = time.monotonic()
        assert api.http.post(f"/v1/machines/{mid}/resume").status_code == 200
        resume.append(time.monotonic() - started)
    print(f"hibernate p50 {ms(p50(hibernate))}; resume p50 {ms(p50(resume))}\n")

    # -- snapshots and fork --------------------------------------------------------------------------------------
    pauses, sizes, forks = [], [], []
    rss_before = sum(rss_and_ticks(p)[0] for p in qemu_pids(data_dir))
    for _ in range(max(3, runs // 3)):
        answer = api.http.post(f"/v1/machines/{mid}/snapshots", headers={"Idempotency-Key": os.urandom(8).hex()})
        assert answer.status_code == 201, answer.text
        snap = answer.json()
        manifest = json.loads((data_dir / "snapshots" / snap["id"] / "manifest.json").read_text())
        pauses.append(float(manifest["snapshot_seconds"]))
        sizes.append(int(snap["size_bytes"]))
        api.http.delete(f"/v1/snapshots/{snap['id']}")
        started = time.monotonic()
        answer = api.http.post(f"/v1/machines/{mid}/fork", headers={"Idempotency-Key": os.urandom(8).hex()})
        forks.append(time.monotonic() - started)
        assert answer.status_code == 201, answer.text
        api.kill(answer.json()["id"])
    print(f"snapshot: source paused p50 {ms(p50(pauses))}; writes p50 {p50(sizes) / MIB:.0f} MiB for a machine whose "
          f"QEMU holds {rss_before / MIB:.0f} MiB resident")
    print(f"fork → child running: p50 {ms(p50(forks))}\n")
    api.kill(mid)

    # -- warm pool ---------------------------------------------------------------------------------------------
    pool = TemplateWarmPool.create(template, name="bench", min_ready=2, max_ready=2, **conn)  # type: ignore[arg-type]
    checkouts, colds = [], []
    for _ in range(max(3, runs // 2)):
        pool.wait_until_ready(timeout_secs=300, interval_secs=0.2)
        mid, took, body = api.create(template, warm_pool={"id": pool.id, "mode": "require", "wait_ms": 0})
        assert body["warm_pool_checkout"]["hit"], body
        checkouts.append(took)
        api.kill(mid)
        mid, took, _ = api.create(template)
        colds.append(took)
        api.kill(mid)
    pool.delete()
    print(f"warm-pool checkout → 201 p50 {ms(p50(checkouts))} vs cold create p50 {ms(p50(colds))}   "
          f"ratio {p50(checkouts) / p50(colds):.2f}x\n")

    # -- idle capacity -----------------------------------------------------------------------------------------
    ids = []
    started = time.monotonic()
    for _ in range(args.idle):
        ids.append(api.create(template)[0])
    filled = time.monotonic() - started
    time.sleep(5)
    pids = qemu_pids(data_dir)
    first = {p: rss_and_ticks(p) for p in pids}
    time.sleep(10)
    last = {p: rss_and_ticks(p) for p in pids if Path(f"/proc/{p}").exists()}
    rss = [last[p][0] for p in last]
    cpu = sum(last[p][1] - first[p][1] for p in last) / os.sysconf("SC_CLK_TCK") / 10
    per_rss = p50(rss)
    print(f"idle machines: {len(ids)} started in {filled:.1f} s; RSS p50 {per_rss / MIB:.0f} MiB, total "
          f"{sum(rss) / (1 << 30):.2f} GiB; CPU {cpu:.2f} cores total ({cpu / max(1, len(rss)) * 100:.2f} % each)")
    print(f"  → idle 512 MiB machines within 20 GiB at this RSS: {int(20 * (1 << 30) / per_rss)} "
          f"(CPU at that count: {cpu / max(1, len(rss)) * 20 * (1 << 30) / per_rss:.1f} cores)")
    for machine_id in ids:
        api.kill(machine_id)


if __name__ == "__main__":
    main()
