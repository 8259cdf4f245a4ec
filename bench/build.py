"""Benchmark: a native template build, cold and fully cached, on this host's accelerator (TCG here).

The template: the busybox image on a loopback registry, 3 steps (run, copy from a blob, run), a start command
and a tcp readiness probe, snapshot. Measured through ``NativeExecutor.run`` (what the service's workers call):

- cold: a fresh data directory every run (no image layers, no base disk, no step layers, no artifact cached);
- cached: the identical request again on a warm data directory (every step a cache hit, artifact reused).

Prints the median of N runs of each, the ratio, and the median time per log phase (from the pipeline's own log
entries: a phase lasts from its first entry to the first entry of the next phase). Targets on the 2-core dev
machine: cold <= 5 s, cached <= 1 s. The comparison point a user would otherwise have is the cold path itself
(boot, run the steps, snapshot): the ratio is what the cache saves.

Run: ``.venv/bin/python bench/build.py [--runs 5]`` as root after ``amber setup-guest``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# bench/dockerfile.py would shadow the ``dockerfile`` parser package: drop bench/ from the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from tests.support.images import push_busybox_image  # noqa: E402
from tests.support.jobs import job_for  # noqa: E402
from tests.support.registry import running_registry  # noqa: E402

from amber.builds.executor import BuildArtifact  # noqa: E402
from amber.builds.pipeline import NativeExecutor  # noqa: E402
from amber.contract.logs import CacheKind, CacheStatus, LogEvent, LogKind  # noqa: E402
from amber.guest.install import ensure_guest  # noqa: E402
from amber.settings import get_settings  # noqa: E402
from amber.vm import QemuDriver, resolve_accel  # noqa: E402

APP = b"print('hello')\n"
APP_BLOB = "sha256:" + hashlib.sha256(APP).hexdigest()


def request(base_ref: str) -> dict[str, object]:
    return {
        "name": "bench",
        "base_image": base_ref,
        "build_config": {"vcpus": 1, "memory_mib": 256},
        "steps": [
            {"action": "run", "command": "mkdir -p /srv && echo ok > /srv/index.html"},
            {"action": "copy", "sources": ["ctx/app.py"], "dst": "/srv/app.py"},
            {"action": "run", "command": "echo built > /srv/built"},
        ],
        "build_context": {"files": [{"path": "ctx/app.py", "entry_type": "file", "blob_id": APP_BLOB}]},
        "start_cmd": "exec httpd -f -p 8080 -h /srv",
        "runtime_config": {"readiness": {"kind": "tcp", "port": 8080, "interval_ms": 50, "startup_grace_secs": 0}},
    }


class Timeline:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.marks: list[tuple[float, str]] = []
        self.events: list[LogEvent] = []

    async def emit(self, event: LogEvent) -> None:
        self.events.append(event)
        if event.phase is not None:
            self.marks.append((time.monotonic() - self.started, event.phase.value))

    def phase_seconds(self, total: float) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        ordered = [m for i, m in enumerate(self.marks) if i == 0 or self.marks[i - 1][1] != m[1]]
        for i, (at, phase) in enumerate(ordered):
            end = ordered[i + 1][0] if i + 1 < len(ordered) else total
            out[phase] += end - at
        return out


async def one_build(data_dir: Path, base_ref: str, blob: Path, build_id: str) -> tuple[float, Timeline]:
    executor = NativeExecutor(data_dir=data_dir, vm=QemuDriver(data_dir))
    job = job_for(request(base_ref), build_id, data_dir, blob_paths={APP_BLOB: blob})
    timeline = Timeline()
    started = time.monotonic()
    result = await executor.run(job, timeline.emit, asyncio.Event())
    elapsed = time.monotonic() - started
    assert isinstance(result, BuildArtifact)
    return elapsed, timeline


def fresh_data_dir(root: Path, guest: Path, name: str) -> Path:
    d = root / name
    d.mkdir()
    (d / "guest").symlink_to(guest)
    return d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    guest_root = get_settings().data_dir.resolve()
    ensure_guest(guest_root)
    print(f"accelerator: {resolve_accel(None)}; runs: {args.runs}")
    with running_registry() as registry, tempfile.TemporaryDirectory(prefix="amber-bench-build-") as tmp:
        root = Path(tmp)
        base_ref = push_busybox_image(registry)
        blob = root / "app.py"
        blob.write_bytes(APP)
        cold: list[float] = []
        cached: list[float] = []
        cold_phases: dict[str, list[float]] = defaultdict(list)
        cached_phases: dict[str, list[float]] = defaultdict(list)
        for i in range(args.runs):
            data_dir = fresh_data_dir(root, guest_root / "guest", f"run{i}")
            seconds, timeline = asyncio.run(one_build(data_dir, base_ref, blob, f"tb_cold{i}"))
            cold.append(seconds)
            for phase, value in timeline.phase_seconds(seconds).items():
                cold_phases[phase].append(value)
            seconds, timeline = asyncio.run(one_build(data_dir, base_ref, blob, f"tb_cached{i}"))
            hits = [e for e in timeline.events if e.kind == LogKind.CACHE and e.cache_status == CacheStatus.HIT]
            assert any(e.cache_kind == CacheKind.FINAL_ARTIFACT for e in hits), "the rebuild was not cached"
            cached.append(seconds)
            for phase, value in timeline.phase_seconds(seconds).items():
                cached_phases[phase].append(value)
            shutil.rmtree(data_dir / "artifacts", ignore_errors=True)
            print(f"run {i + 1}: cold {cold[-1]:.2f} s, cached {cached[-1]:.3f} s")
        cold_median, cached_median = statistics.median(cold), statistics.median(cached)
        print()
        print(f"cold build   median {cold_median:6.2f} s   (target <= 5 s)")
        print(f"cached build median {cached_median:6.3f} s   (target <= 1 s)")
        print(f"cached / cold = {cached_median / cold_median:.3f}  (cold is {cold_median / cached_median:.1f}x slower)")
        for title, phases in (("cold", cold_phases), ("cached", cached_phases)):
            print(f"\n{title} phases (median s):")
            for phase, values in phases.items():
                print(f"  {phase:<10} {statistics.median(values):6.3f}")


if __name__ == "__main__":
    main()
