"""Benchmark: import a ~200 MB Debian-minbase image (3 gzip layers) from a loopback registry into ext4.

Compared in the same run, on the same image and registry (``amber.rootfs.image_import.import_image``):
- **amber cold**: empty layer cache, no disk cache: download + verify + unpack + mkfs;
- **amber warm (layer cache)**: the same again with the layer cache filled: nothing is downloaded, the
  manifest is still fetched (access check), unpack + mkfs run again;
- **amber cold + disk cache**: as ``amber image import`` runs by default: empty caches, and the finished
  disk is also kept in the disk cache (one extra sparse copy);
- **amber warm (disk cache)**: the same call again: manifest check, then a sparse copy of the cached disk;
- **skopeo+umoci+mkfs**: ``skopeo copy docker://… oci:…`` + ``umoci unpack`` + ``mkfs.ext4 -d`` (the tool
  chain a user would otherwise use);
- **floor**: the sum of ``gzip -dc`` of the three layers plus ``mkfs.ext4 -d`` of the unpacked tree.
Every variant writes an ext4 image of the same size with ``-b 4096``. Medians of ``--runs`` runs (default 3).
Targets (issue 2): amber cold <= 0.8 x chain, <= 1.5 x floor; warm <= 0.5 x cold (printed for both caches).

The Debian tree is built once with ``debootstrap --variant=minbase bookworm`` (needs the Debian mirror) and
cached OUTSIDE the repository in ``/var/cache/amber-bench/oci-import`` (``AMBER_BENCH_DIR`` overrides); the
three layer blobs are cached next to it. Without the tree the benchmark says so and exits with status 2;
``--build-fixture`` builds it. Run as root from the repository root: ``.venv/bin/python bench/import.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support lives at the repo root

from tests.support.images import ImageConfig, Layer, build_image, push_image
from tests.support.registry import RegistryMode, running_registry

from amber.builds.image_import import import_image
from amber.rootfs.ext4 import disk_size_bytes, measure_tree

BENCH_DIR = Path(os.environ.get("AMBER_BENCH_DIR", "/var/cache/amber-bench/oci-import"))
TREE = BENCH_DIR / "rootfs"
LAYERS = BENCH_DIR / "layers"
MIRROR = "http://deb.debian.org/debian"
# Three layers, as a Dockerfile-built image would have: the bulk of /usr, then /var + /etc, then the rest.
# /dev is left empty as in published images (debootstrap creates device nodes, which R34 rejects).
LAYER_SPLIT: list[list[str]] = [["usr"], ["var", "etc"], []]


def _mirror() -> str:
    """The Debian mirror apt uses on this machine (the only one reachable)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return MIRROR


def build_fixture() -> None:
    partial = BENCH_DIR / "rootfs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    print(f"building the fixture with debootstrap --variant=minbase bookworm into {TREE} …", flush=True)
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(partial), _mirror()], check=True)
    partial.rename(TREE)


def _layer_tars() -> list[Path]:
    """Cached gzip layer blobs made from the tree with GNU tar (numeric owners, xattrs)."""
    LAYERS.mkdir(parents=True, exist_ok=True)
    top = sorted(os.listdir(TREE))
    claimed = {name for group in LAYER_SPLIT for name in group}
    paths = []
    for index, group in enumerate(LAYER_SPLIT):
        members = group or [name for name in top if name not in claimed]
        blob = LAYERS / f"layer{index}.tar.gz"
        if not blob.exists():
            tmp = blob.with_suffix(".partial")
            with tmp.open("wb") as out:
                tar = subprocess.Popen(
                    ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--sort=name", "--exclude=dev/*",
                     "-C", str(TREE), "-cf", "-", *members], stdout=subprocess.PIPE,
                )
                gz = subprocess.run(["gzip", "-6", "-n"], stdin=tar.stdout, stdout=out, check=True)
                assert tar.wait() == 0 and gz.returncode == 0
            tmp.rename(blob)
        paths.append(blob)
    return paths


def _layer(blob: Path) -> Layer:
    data = blob.read_bytes()
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    return Layer(data, "application/vnd.oci.image.layer.v1.tar+gzip", diff_id, f"bench {blob.name}")


def _timed(fn: Callable[..., object], *args: object) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def _mkfs(tree: Path, image: Path, size: int) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree), str(image), f"{size // 1024}k"],
                   check=True, capture_output=True)


def run_amber(ref: str, disk: Path, cache: Path, disks: Path | None, size: int) -> None:
    asyncio.run(import_image(ref, disk, cache_dir=cache, disk_cache_dir=disks, min_size_mib=size // 2**20))


def run_chain(ref: str, work: Path, size: int) -> None:
    layout, bundle = work / "oci-layout", work / "bundle"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                    f"oci:{layout}:minbase"], check=True, capture_output=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:minbase", str(bundle)], check=True, capture_output=True)
    _mkfs(bundle / "rootfs", work / "chain.ext4", size)


def run_floor(blobs: list[Path], work: Path, size: int) -> None:
    for blob in blobs:
        subprocess.run(["gzip", "-dc", str(blob)], stdout=subprocess.DEVNULL, check=True)
    _mkfs(TREE, work / "floor.ext4", size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--build-fixture", action="store_true", help="run debootstrap if the tree is missing")
    args = parser.parse_args()
    if not TREE.is_dir():
        if not args.build_fixture:
            print(f"FIXTURE MISSING: no Debian minbase tree at {TREE}.\n"
                  f"Build it once (needs the Debian mirror, ~30 s): .venv/bin/python bench/import.py --build-fixture",
                  file=sys.stderr)
            return 2
        build_fixture()
    for tool in ("skopeo", "umoci", "mkfs.ext4", "gzip", "tar"):
        if shutil.which(tool) is None:
            print(f"missing tool: {tool} (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    blobs = _layer_tars()
    layers = [_layer(b) for b in blobs]
    size, _ = disk_size_bytes(measure_tree(TREE), 0)
    unpacked_mib = sum(e.stat().st_size for e in TREE.rglob("*") if e.is_file() and not e.is_symlink()) / 2**20
    print(f"image: {len(layers)} gzip layers, {sum(la.size for la in layers) / 2**20:.1f} MiB compressed, "
          f"~{unpacked_mib:.0f} MiB of files; disk size {size // 2**20} MiB; runs: {args.runs}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="amber-bench-import-", dir="/var/tmp"))
    names = ["amber cold", "amber warm (layer cache)", "amber cold + disk cache", "amber warm (disk cache)",
             "skopeo+umoci+mkfs", "floor"]
    results: dict[str, list[float]] = {name: [] for name in names}
    try:
        with running_registry(RegistryMode.NOAUTH, root=work / "registry") as registry:
            push_image(registry, "bench/debian", build_image(layers, ImageConfig(cmd=["/bin/bash"])), "minbase")
            ref = registry.ref("bench/debian", "minbase")
            for run in range(args.runs):
                cache, cache2, disks = work / f"cache-{run}", work / f"cache2-{run}", work / f"disks-{run}"
                out = work / "amber.ext4"
                results["amber cold"].append(_timed(run_amber, ref, out, cache, None, size))
                results["amber warm (layer cache)"].append(_timed(run_amber, ref, out, cache, None, size))
                results["amber cold + disk cache"].append(_timed(run_amber, ref, out, cache2, disks, size))
                results["amber warm (disk cache)"].append(_timed(run_amber, ref, out, cache2, disks, size))
                results["skopeo+umoci+mkfs"].append(_timed(run_chain, ref, work, size))
                results["floor"].append(_timed(run_floor, blobs, work, size))
                for leftover in (cache, cache2, disks, work / "oci-layout", work / "bundle"):
                    shutil.rmtree(leftover)
                print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {k: statistics.median(v) for k, v in results.items()}
    print("\nmedians:")
    for name, value in median.items():
        print(f"  {name:<26} {value:6.2f} s")
    cold, chain_s, floor_s = median["amber cold"], median["skopeo+umoci+mkfs"], median["floor"]
    print("\nratios (target):")
    print(f"  amber cold / skopeo+umoci+mkfs                      = {cold / chain_s:.2f}  (<= 0.80)")
    print(f"  amber cold / floor                                  = {cold / floor_s:.2f}  (<= 1.50)")
    print(f"  amber warm (layer cache) / amber cold               = {median[names[1]] / cold:.2f}  (<= 0.50)")
    print(f"  amber warm (disk cache) / amber cold + disk cache   = {median[names[3]] / median[names[2]]:.2f}"
          "  (<= 0.50)")
    print(f"  amber cold + disk cache / skopeo+umoci+mkfs         = {median[names[2]] / chain_s:.2f}  (<= 0.80)")
    print(f"  amber cold + disk cache / floor                     = {median[names[2]] / floor_s:.2f}  (<= 1.50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
