"""Benchmark: Amber's BuildKit path (Dockerfile → rootfs tree + image config) vs ``docker build -o type=tar``.

Both run on the same dockerd (Amber's managed one, started and stopped here) against the same Debian-minbase
base image on a loopback registry, with the same Dockerfile (one COPY, two RUN steps) and context:
- cold: BuildKit's cache pruned before every run (base pulled again, every step runs);
- cached: everything in BuildKit's cache.
Prints medians and the overhead Amber adds on top of BuildKit (target: <= 2 s). Not a pass/fail test.

This measures Amber's part only (dockerd build → unpacked tree): the end-to-end path to a ready template
(ext4, build VM, start command, snapshot) belongs to the pipeline and is not included.

The Debian tree is made once with ``debootstrap --variant=minbase bookworm`` (about 30 s, needs the Debian
mirror) and cached in ``$AMBER_BENCH_CACHE`` (default ``/var/cache/amber-bench``).

Run: ``.venv/bin/python bench/dockerfile.py [--cold N] [--cached N]`` as root.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file's own name would shadow the ``dockerfile`` parser package: drop bench/ from the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from tests.support.images import OCI_MANIFEST, Layer, build_image, push_image  # noqa: E402
from tests.support.registry import running_registry  # noqa: E402

from amber.buildkit.build import DockerfileBuildRequest, build_dockerfile_rootfs  # noqa: E402
from amber.buildkit.daemon import ManagedDockerd  # noqa: E402
from amber.builds.executor import LogEvent  # noqa: E402

CACHE = Path(os.environ.get("AMBER_BENCH_CACHE", "/var/cache/amber-bench"))
DOCKER_CLI = "/usr/bin/docker"  # never /usr/local/bin/docker (no buildx, fails with BuildKit)
APP_FILES = {"app/main.sh": "#!/bin/sh\necho hello from the bench\n", "app/data.txt": "x" * 4096}


def debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    for line in sources.read_text().splitlines() if sources.exists() else []:
        if line.startswith("URIs:"):
            return line.split()[1]
    raise SystemExit("no Debian mirror found in /etc/apt/sources.list.d/debian.sources")


def debian_layer() -> Layer:
    """The debootstrap tree as one gzip layer, cached on disk."""
    tree = CACHE / "debian-minbase"
    blob = CACHE / "debian-minbase.layer.tar.gz"
    if not (tree / "usr/bin/apt-get").exists():
        print(f"building the Debian-minbase fixture in {tree} (debootstrap, ~30 s) ...", flush=True)
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(tree), debian_mirror()],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if not blob.exists():
        # GNU tar, without /dev's device nodes (image layers carry an empty /dev, as Debian's images do).
        raw = subprocess.run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--exclude=./dev/*",
                "-C",
                str(tree),
                "-cf",
                "-",
                ".",
            ],
            check=True,
            capture_output=True,
        ).stdout
        blob.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
        (CACHE / "debian-minbase.diffid").write_text("sha256:" + hashlib.sha256(raw).hexdigest())
    data = blob.read_bytes()
    diff_id = (CACHE / "debian-minbase.diffid").read_text().strip()
    return Layer(data, "application/vnd.oci.image.layer.v1.tar+gzip", diff_id, "debootstrap minbase bookworm")


def dockerfile_for(base: str) -> str:
    return (
        f"FROM {base}\n"
        "COPY app/ /opt/app/\n"
        "RUN chmod 0755 /opt/app/main.sh && /opt/app/main.sh > /opt/app/out.txt\n"
        "RUN useradd -m bench && dpkg -l | wc -l > /home/bench/packages\n"
    )


class _File:
    def __init__(self, path: str, text: str) -> None:
        import base64

        self.path = path
        self.entry_type = "file"
        self.content_base64 = base64.b64encode(text.encode()).decode()
        self.blob_id: str | None = None
        self.mode: str | None = None


async def prune(dockerd: ManagedDockerd) -> None:
    async with dockerd.client(timeout=120) as api:
        (await api.post("/build/prune", params={"all": "1"})).raise_for_status()


async def amber_build(dockerd: ManagedDockerd, base: str, work: Path) -> float:
    shutil.rmtree(work, ignore_errors=True)

    async def emit(event: LogEvent) -> None:
        pass

    request = DockerfileBuildRequest(
        dockerfile=dockerfile_for(base),
        context_files=[_File(p, t) for p, t in APP_FILES.items()],  # type: ignore[list-item]
        internet_access=False,
    )
    started = time.perf_counter()
    await build_dockerfile_rootfs(
        request,
        dockerd=dockerd,
        target_dir=work / "tree",
        staging_dir=work / "staging",
        emit=emit,
        cancel=asyncio.Event(),
    )
    elapsed = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    return elapsed


def docker_build(dockerd: ManagedDockerd, base: str, work: Path) -> float:
    shutil.rmtree(work, ignore_errors=True)
    context = work / "context"
    for path, text in APP_FILES.items():
        (context / path).parent.mkdir(parents=True, exist_ok=True)
        (context / path).write_text(text)
    (context / "Dockerfile").write_text(dockerfile_for(base))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DOCKER_HOST": f"unix://{dockerd.layout.socket}",
        "DOCKER_BUILDKIT": "1",
        "DOCKER_CONFIG": str(work / "docker-config"),
        "HOME": str(work),
    }
    started = time.perf_counter()
    subprocess.run(
        [DOCKER_CLI, "build", "--network=none", "-o", f"type=tar,dest={work / 'out.tar'}", str(context)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    return elapsed


async def main(cold_runs: int, cached_runs: int) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root (dockerd and debootstrap need it)")
    layer = debian_layer()
    with running_registry("noauth") as registry, tempfile.TemporaryDirectory(prefix="amber-bench-") as tmp:
        image = build_image([layer])
        assert image.manifest_media_type == OCI_MANIFEST
        push_image(registry, "bench/debian", image, "bookworm")
        base = registry.ref("bench/debian", "bookworm")
        dockerd = ManagedDockerd(Path(tmp) / "dockerd")
        await dockerd.ensure_running()
        try:
            results: dict[str, list[float]] = {
                "amber cold": [],
                "docker cold": [],
                "amber cached": [],
                "docker cached": [],
            }
            for _ in range(cold_runs):
                await prune(dockerd)
                results["docker cold"].append(docker_build(dockerd, base, Path(tmp) / "d"))
                await prune(dockerd)
                results["amber cold"].append(await amber_build(dockerd, base, Path(tmp) / "a"))
            docker_build(dockerd, base, Path(tmp) / "d")  # warm the cache for both
            for _ in range(cached_runs):
                results["docker cached"].append(docker_build(dockerd, base, Path(tmp) / "d"))
                results["amber cached"].append(await amber_build(dockerd, base, Path(tmp) / "a"))
        finally:
            await dockerd.stop()
    medians = {name: statistics.median(values) for name, values in results.items()}
    out = io.StringIO()
    print(f"Debian-minbase ({len(layer.data) / 1e6:.0f} MB gzip layer), 1 COPY + 2 RUN, same dockerd 20.10", file=out)
    for name, values in results.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:14s} median {medians[name]:6.2f} s   runs: {runs}", file=out)
    for kind in ("cold", "cached"):
        amber, docker = medians[f"amber {kind}"], medians[f"docker {kind}"]
        print(
            f"  {kind:6s}: Amber / docker build -o type=tar = {amber / docker:.2f}x, "
            f"overhead {amber - docker:+.2f} s (target <= 2 s)",
            file=out,
        )
    print(out.getvalue(), end="")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", type=int, default=3, help="cold runs (default 3)")
    parser.add_argument("--cached", type=int, default=5, help="cached runs (default 5)")
    args = parser.parse_args()
    asyncio.run(main(args.cold, args.cached))
