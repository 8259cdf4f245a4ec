"""Images that are not a full distribution still boot: no /etc, no mount points (a scratch image)."""

from __future__ import annotations

import shutil
from pathlib import Path

from amber.vm import boot
from tests.support.busybox import require_busybox
from tests.vm.conftest import make_disk


def test_scratch_image_without_etc_or_mount_points(data_dir: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    shutil.copy2(require_busybox(), tree / "bin" / "busybox")
    disk = make_disk(tree, tmp_path / "scratch.ext4", 16)
    with boot(disk, data_dir=data_dir, memory_mib=128) as vm:
        assert vm.exec(["/bin/busybox", "id", "-u"]).stdout == b"0\n"
        assert vm.exec(["/bin/busybox", "hostname"]).stdout == b"amber\n"
        assert vm.exec(["/bin/busybox", "ls", "/proc/self/exe"], user="root:root").exit_code == 0
        mounts = vm.exec(["/bin/busybox", "cat", "/proc/mounts"]).stdout.decode()
        assert all(f" {m} " in mounts for m in ("/dev", "/proc", "/sys", "/dev/pts", "/dev/shm"))
        assert vm.exec(["/bin/busybox", "id", "-u"], user="4242").stdout == b"4242\n"
