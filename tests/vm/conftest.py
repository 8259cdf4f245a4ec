"""Shared VM fixtures: the guest (built once by `amber setup-guest`), a busybox disk, a session data dir.

VMs boot under whatever accelerator the host offers (TCG here); nothing is skipped for lack of KVM.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from amber.guest.install import ensure_guest
from amber.settings import get_settings
from amber.vm import MicroVM, boot, sweep_stale
from tests.support.busybox import make_busybox_tree


def make_disk(tree: Path, image: Path, size_mb: int = 64) -> Path:
    """An ext4 image of ``tree`` (4 KiB blocks, owners and modes kept)."""
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree), str(image), f"{size_mb}M"],
                   check=True, capture_output=True)
    return image


@pytest.fixture(scope="session")
def guest_data_dir() -> Path:
    """The repository's data dir, where `amber setup-guest` builds the kernel (idempotent, fast if built)."""
    data_dir = get_settings().data_dir.resolve()
    ensure_guest(data_dir)
    return data_dir


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, guest_data_dir: Path) -> Iterator[Path]:
    """A private data dir for the VM tests whose guest/ points at the built guest."""
    d = tmp_path_factory.mktemp("amber-data")
    (d / "guest").symlink_to(guest_data_dir / "guest")
    yield d
    sweep_stale(d)
    leftovers = list((d / "run").glob("vm-*")) if (d / "run").exists() else []
    assert not leftovers, f"VM run directories left behind: {leftovers}"


@pytest.fixture(scope="session")
def busybox_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox fixture root disk (read-only base for every VM test)."""
    d = tmp_path_factory.mktemp("busybox")
    tree = make_busybox_tree(d / "tree")
    www = tree / "www" / "cgi-bin"
    www.mkdir(parents=True)
    # A CGI for the http probe and the restore tests: prints the in-memory counter (kept on tmpfs).
    (www / "counter").write_text("#!/bin/sh\necho 'Content-Type: text/plain'\necho\ncat /dev/shm/counter\n")
    (www / "counter").chmod(0o755)
    (tree / "www" / "index.html").write_text("hello from the guest\n")
    disk = make_disk(tree, d / "busybox.ext4")
    disk.chmod(0o444)
    return disk


@pytest.fixture(scope="module")
def vm(busybox_disk: Path, data_dir: Path) -> Iterator[MicroVM]:
    """One booted VM shared by a test module (tests must not depend on each other's leftovers)."""
    with boot(busybox_disk, data_dir=data_dir, cpus=1, memory_mib=256) as machine:
        yield machine


def qemu_processes_for(data_dir: Path) -> list[int]:
    """PIDs of QEMU processes whose command line or cwd mentions ``data_dir``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmd and str(data_dir) in cmd:
            found.append(int(proc.name))
    return found
