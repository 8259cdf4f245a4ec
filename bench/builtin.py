"""Benchmark: the builtin template ``nullspace/base`` — setup when it is up to date, a rebuild after a runtime-only
definition change (from the cached disk: boot, warm-up, snapshot; no debootstrap), the artifact's size, and
restores from it (to the agent, then a first ``python3 --version`` and ``import http.server``) against a cold
boot of the same disk. The rebuild runs on a hard-linked copy of the data directory's builtin, so the repository's
stays as it is. Not a pass/fail test.

Run: ``.venv/bin/python bench/builtin.py [-n 5]`` as root, after ``make setup``, under the heavy lock.
The cold build is measured by ``time .venv/bin/amber setup-base --rebuild`` (debootstrap needs the mirror).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amber.builds.builtin import BASE, ensure_builtin
from amber.builds.builtin.build import CURRENT, builtin_root
from amber.settings import get_settings
from amber.vm import DiskChain, TemplateArtifact, boot, restore


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=5, help="restores and boots to measure")
    args = parser.parse_args()
    repo = get_settings().data_dir.resolve()
    started = time.monotonic()
    base = ensure_builtin(repo).artifact
    print(f"up-to-date check (in process): {time.monotonic() - started:.3f} s")
    artifact = TemplateArtifact.load(base.directory)
    sizes = artifact.size_bytes()
    print(f"artifact {base.artifact_id}: {sizes['allocated'] / 2**20:.0f} MiB allocated "
          f"(memory {sizes.get('memory_allocated', 0) / 2**20:.0f} MiB), {sizes['apparent'] / 2**30:.1f} GiB apparent")
    with tempfile.TemporaryDirectory(dir=repo) as tmp:  # same file system: hard links
        work = Path(tmp)
        (work / "guest").symlink_to(repo / "guest")
        root = builtin_root(work)
        root.mkdir(parents=True)
        subprocess.run(["cp", "-al", str(base.directory), str(root / base.directory.name)], check=True)
        disk = next(base.directory.parent.glob("disk-*.ext4"))
        os.link(disk, root / disk.name)
        (root / CURRENT).write_text((base.directory.parent / CURRENT).read_text())
        started = time.monotonic()
        rebuilt = ensure_builtin(work, replace(BASE, env=(*BASE.env, ("BENCH", "1"))))
        assert rebuilt.built and rebuilt.disk_cached
        print(f"runtime-only rebuild (cached disk): {time.monotonic() - started:.1f} s")
        restores, firsts, imports, boots = [], [], [], []
        for _ in range(args.n):
            started = time.monotonic()
            with restore(artifact, data_dir=work) as vm:
                restores.append(time.monotonic() - started)
                started = time.monotonic()
                assert vm.exec(["python3", "--version"]).ok
                firsts.append(time.monotonic() - started)
                started = time.monotonic()
                assert vm.exec(["python3", "-c", "import http.server"]).ok
                imports.append(time.monotonic() - started)
            started = time.monotonic()
            with boot(DiskChain.of(disk), data_dir=work, cpus=BASE.vcpus, memory_mib=BASE.memory_mib):
                boots.append(time.monotonic() - started)
    print(f"restore to agent:              {median(restores)}")
    ratio = statistics.median(restores) / statistics.median(boots)
    print(f"cold boot of the same disk:    {median(boots)} (restore/boot {ratio:.2f})")
    print(f"first python3 --version:       {median(firsts)}")
    print(f"python3 -c 'import http.server': {median(imports)}")


if __name__ == "__main__":
    main()
