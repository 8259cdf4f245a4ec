"""Benchmark: microVM cold boot, snapshot and lazy restore, against the naive snapshot path.

Lazy path (what Amber uses): guest RAM in a file mapped ``share=on`` while the template runs; the snapshot
writes only device state (``x-ignore-shared``); restores map the file private (copy-on-write) and fault
pages in on demand. Naive path (what plain ``qemu`` savevm/migrate gives you): anonymous guest RAM, every
non-zero page written to the state file and read back on restore. Both are measured in the same run, on the
same busybox disk, 512 MiB guests, 1 vCPU, with a small service running (a counter loop) at snapshot time.

Per mode and N iterations (median printed, with min-max): cold boot to first agent reply; snapshot (QMP stop
→ migration completed) and the whole ``snapshot()`` call (including moving files and checksumming the
artifact); artifact sizes; restore to first agent reply (including clock/RNG/boot_id duties), one at a time
and 5 in parallel; RSS of an idle restored sandbox. Not a pass/fail test; targets are printed alongside.

Network isolation (``--network``, or part of the full run): cold boot and restore without a NIC, with a NIC
and internet off (QEMU in an empty network namespace) and with internet on (QEMU in the isolation group,
the nftables table checked before each launch), interleaved round by round so drift hits all alike; plus
the bare cost of each confinement step (``unshare --net``, the ``nft`` check).

Memory hygiene (``--hygiene``): cold boot, the memory file's allocated size while the VM runs and in the artifact
(``fallocate --dig-holes``), snapshot call and restore, with ``boot(zero_freed_memory=True)`` (the guest
kernel's ``init_on_free=1``, what builds with ``build_envs`` get) and without it, interleaved.

Run: ``.venv/bin/python bench/vm.py [-n 10] [--network] [--hygiene]`` as root, after ``make setup``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.busybox import make_busybox_tree

from amber.guest.install import ensure_guest
from amber.isolation import ensure_host_rules
from amber.settings import get_settings
from amber.vm import MemoryBackend, MicroVM, TemplateArtifact, boot, resolve_accel, restore

MEMORY_MIB = 512
PARALLEL = 5
SERVICE = "(i=0; while true; do i=$((i+1)); echo $i > /dev/shm/counter; sleep 1; done) >/dev/null 2>&1 &"


@dataclass
class Results:
    boot: list[float] = field(default_factory=list)
    snapshot: list[float] = field(default_factory=list)
    snapshot_call: list[float] = field(default_factory=list)
    restore: list[float] = field(default_factory=list)
    parallel_wall: list[float] = field(default_factory=list)
    parallel_each: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    state_bytes: int = 0
    memory_allocated: int = 0
    artifact_allocated: int = 0


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_s(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{med(values):.3f} s ({min(values):.3f}-{max(values):.3f})"


def timed_restore(artifact: TemplateArtifact, data_dir: Path, *, internet: bool = False) -> tuple[float, MicroVM]:
    started = time.monotonic()
    vm = restore(artifact, data_dir=data_dir, internet=internet)
    return time.monotonic() - started, vm


def run_mode(backend: MemoryBackend, n: int, disk: Path, data_dir: Path, work: Path) -> Results:
    res = Results()
    artifacts: list[TemplateArtifact] = []
    for i in range(n):
        started = time.monotonic()
        vm = boot(disk, data_dir=data_dir, memory_mib=MEMORY_MIB, memory_backend=backend)
        res.boot.append(time.monotonic() - started)
        with vm:
            vm.exec(shell=SERVICE)
            started = time.monotonic()
            artifact = vm.snapshot(work / f"{backend}-{i}")
            res.snapshot_call.append(time.monotonic() - started)
        res.snapshot.append(artifact.snapshot_seconds)
        artifacts.append(artifact)
        print(f"  {backend} boot+snapshot {i + 1}/{n}", file=sys.stderr)
    template = artifacts[0]
    sizes = template.size_bytes()
    res.state_bytes = sizes["state"]
    res.memory_allocated = sizes.get("memory_allocated", 0)
    res.artifact_allocated = sizes["allocated"]
    for extra in artifacts[1:]:
        shutil.rmtree(extra.directory)
    for i in range(n):
        seconds, vm = timed_restore(template, data_dir)
        with vm:
            res.restore.append(seconds)
            time.sleep(1.0)  # idle: what a parked sandbox costs
            res.rss.append(vm.rss_bytes() / 1e6)
        print(f"  {backend} restore {i + 1}/{n}", file=sys.stderr)
    for i in range(n):
        started = time.monotonic()
        with ThreadPoolExecutor(PARALLEL) as pool:
            done = list(pool.map(lambda _: timed_restore(template, data_dir), range(PARALLEL)))
        res.parallel_wall.append(time.monotonic() - started)
        for seconds, vm in done:
            res.parallel_each.append(seconds)
            vm.close()
        print(f"  {backend} parallel round {i + 1}/{n}", file=sys.stderr)
    shutil.rmtree(template.directory)
    return res


NETWORK_VARIANTS = (("no NIC", False, False), ("NIC, internet off", True, False), ("NIC, internet on", True, True))


def _timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def run_network(n: int, disk: Path, data_dir: Path, work: Path) -> None:
    """Boot and restore cost of the NIC and of each confinement, printed as a table."""
    boots: dict[str, list[float]] = {name: [] for name, _, _ in NETWORK_VARIANTS}
    restores: dict[str, list[float]] = {name: [] for name, _, _ in NETWORK_VARIANTS}
    for i in range(n):
        for name, nic, internet in NETWORK_VARIANTS:
            started = time.monotonic()
            with boot(disk, data_dir=data_dir, memory_mib=MEMORY_MIB, nic=nic, internet=internet):
                boots[name].append(time.monotonic() - started)
        print(f"  network boots {i + 1}/{n}", file=sys.stderr)
    artifacts = {}
    for nic in (False, True):
        with boot(disk, data_dir=data_dir, memory_mib=MEMORY_MIB, nic=nic) as vm:
            vm.exec(shell=SERVICE)
            artifacts[nic] = vm.snapshot(work / f"net-{nic}")
    for i in range(n):
        for name, nic, internet in NETWORK_VARIANTS:
            seconds, vm = timed_restore(artifacts[nic], data_dir, internet=internet)
            vm.close()
            restores[name].append(seconds)
        print(f"  network restores {i + 1}/{n}", file=sys.stderr)
    unshare = [_timed(lambda: subprocess.run(["unshare", "--net", "--", "true"], check=True)) for _ in range(n)]
    plain = [_timed(lambda: subprocess.run(["true"], check=True)) for _ in range(n)]
    check = [_timed(ensure_host_rules) for _ in range(n)]
    print(f"\nnetwork isolation: accel={resolve_accel(None)}, {MEMORY_MIB} MiB guest, 1 vCPU, median of {n} (min-max)")
    width = max(len(name) for name, _, _ in NETWORK_VARIANTS)
    print(f"{'':{width}}  {'cold boot → agent':28} {'restore → agent':28}")
    for name, _, _ in NETWORK_VARIANTS:
        print(f"{name:{width}}  {fmt_s(boots[name]):28} {fmt_s(restores[name]):28}")
    base_boot, base_restore = med(boots["no NIC"]), med(restores["no NIC"])
    for name, _, _ in NETWORK_VARIANTS[1:]:
        print(f"  {name}: boot {1000 * (med(boots[name]) - base_boot):+.0f} ms, "
              f"restore {1000 * (med(restores[name]) - base_restore):+.0f} ms against no NIC")
    print(f"process start: plain {fmt_s(plain)}, through unshare --net {fmt_s(unshare)}; "
          f"nft table check {fmt_s(check)}")


def run_hygiene(n: int, disk: Path, data_dir: Path, work: Path) -> None:
    """What ``zero_freed_memory`` (``init_on_free=1``) costs: boot, memory file size, snapshot and restore."""
    rows: dict[str, dict[str, list[float]]] = {}
    for i in range(n):
        for name, zero in (("init_on_free=1", True), ("without", False)):
            row = rows.setdefault(name, {"boot": [], "live": [], "snapshot": [], "sparse": [], "restore": []})
            started = time.monotonic()
            with boot(disk, data_dir=data_dir, memory_mib=MEMORY_MIB, zero_freed_memory=zero) as vm:
                row["boot"].append(time.monotonic() - started)
                vm.exec(shell=SERVICE)
                assert vm.files.memory_file is not None
                row["live"].append(vm.files.memory_file.stat().st_blocks * 512 / 1e6)
                started = time.monotonic()
                artifact = vm.snapshot(work / f"hygiene-{name}-{i}")
                row["snapshot"].append(time.monotonic() - started)
            row["sparse"].append(artifact.size_bytes().get("memory_allocated", 0) / 1e6)
            seconds, restored = timed_restore(artifact, data_dir)
            restored.close()
            row["restore"].append(seconds)
            shutil.rmtree(artifact.directory)
        print(f"  hygiene round {i + 1}/{n}", file=sys.stderr)
    print(f"\nmemory hygiene: {MEMORY_MIB} MiB guest, 1 vCPU, median of {n} (min-max)")
    for name, row in rows.items():
        print(f"{name:15} boot {fmt_s(row['boot'])}, memory file {med(row['live']):.0f} MB allocated live, "
              f"{med(row['sparse']):.0f} MB in the artifact; snapshot() {fmt_s(row['snapshot'])}; "
              f"restore {fmt_s(row['restore'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10, help="iterations per measurement (default 10)")
    parser.add_argument("--network", action="store_true", help="only the network isolation measurements")
    parser.add_argument("--hygiene", action="store_true", help="only the init_on_free measurements")
    args = parser.parse_args()
    guest_root = get_settings().data_dir.resolve()
    ensure_guest(guest_root)
    with tempfile.TemporaryDirectory(prefix="amber-bench-vm-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        data_dir.mkdir()
        (data_dir / "guest").symlink_to(guest_root / "guest")
        tree = make_busybox_tree(work / "tree")
        disk = work / "busybox.ext4"
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree), str(disk), "64M"], check=True)
        if not args.hygiene:
            run_network(args.n, disk, data_dir, work)
        if not args.network:
            run_hygiene(args.n, disk, data_dir, work)
        if args.network or args.hygiene:
            return
        lazy = run_mode(MemoryBackend.FILE, args.n, disk, data_dir, work)
        naive = run_mode(MemoryBackend.RAM, args.n, disk, data_dir, work)

    accel = resolve_accel(None)
    print(f"\nmicroVM benchmark: accel={accel}, {MEMORY_MIB} MiB guest, 1 vCPU, busybox disk, "
          f"median of {args.n} (min-max)")
    rows = [
        ("cold boot → first agent reply", fmt_s(lazy.boot), fmt_s(naive.boot), ""),
        ("snapshot (stop → migration done)", fmt_s(lazy.snapshot), fmt_s(naive.snapshot), "≤ 0.050 s"),
        ("snapshot() call incl. artifact", fmt_s(lazy.snapshot_call), fmt_s(naive.snapshot_call), ""),
        ("state file", f"{lazy.state_bytes / 1e6:.2f} MB", f"{naive.state_bytes / 1e6:.2f} MB", ""),
        ("memory file (allocated)", f"{lazy.memory_allocated / 1e6:.1f} MB", "-", ""),
        ("artifact on disk (allocated)", f"{lazy.artifact_allocated / 1e6:.1f} MB",
         f"{naive.artifact_allocated / 1e6:.1f} MB", ""),
        ("restore → first agent reply", fmt_s(lazy.restore), fmt_s(naive.restore), "≤ 0.2 s, ≤ 0.1 x boot"),
        (f"{PARALLEL} restores in parallel (wall)", fmt_s(lazy.parallel_wall), fmt_s(naive.parallel_wall), ""),
        (f"  each of {PARALLEL} parallel", fmt_s(lazy.parallel_each), fmt_s(naive.parallel_each), ""),
        ("RSS per idle restored sandbox", f"{med(lazy.rss):.0f} MB", f"{med(naive.rss):.0f} MB", "≤ 100 MB"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'lazy (Amber)':28} {'naive (anon RAM)':28} target")
    for name, a, b, target in rows:
        print(f"{name:{width}}  {a:28} {b:28} {target}")
    print("\nratios (naive / lazy; > 1 means Amber's path is better):")
    print(f"  snapshot time   {med(naive.snapshot) / med(lazy.snapshot):6.1f}x")
    print(f"  state file size {naive.state_bytes / max(lazy.state_bytes, 1):6.1f}x")
    print(f"  restore time    {med(naive.restore) / med(lazy.restore):6.1f}x")
    print(f"  parallel wall   {med(naive.parallel_wall) / med(lazy.parallel_wall):6.1f}x")
    print(f"  RSS             {med(naive.rss) / med(lazy.rss):6.1f}x")
    print(f"restore / cold boot (lazy): {med(lazy.restore) / med(lazy.boot):.3f}")


if __name__ == "__main__":
    main()
