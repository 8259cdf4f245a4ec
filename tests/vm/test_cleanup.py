"""No QEMU process or run directory outlives its owner: SIGKILL, orphans, failed boots."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amber.vm import BootError, boot, sweep_stale
from amber.vm.qemu.driver import sweep_once
from amber.vm.qemu.host import qemu_binary
from amber.vm.qemu.process import create_run_dir
from tests.vm.conftest import qemu_processes_for

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys, time
from pathlib import Path
from amber.vm import boot
disk, data = Path(sys.argv[1]), Path(sys.argv[2])
vms = [boot(disk, data_dir=data, memory_mib=128) for _ in range(2)]
vms[0].exec(shell="sleep 1000 >/dev/null 2>&1 &")
print(" ".join(str(vm.pid) for vm in vms), flush=True)
time.sleep(600)
"""


@pytest.fixture()
def own_data_dir(data_dir: Path, tmp_path: Path) -> Path:
    """A data dir of its own, so sweeping it cannot touch the VMs of other tests."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "guest").symlink_to((data_dir / "guest").resolve())
    return d


def _gone(pid: int, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while Path(f"/proc/{pid}").exists():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z" or time.monotonic() > deadline:
            return state == "Z"
        time.sleep(0.05)
    return True


def test_sigkill_of_the_owner_then_driver_start_leaves_nothing(busybox_disk: Path, own_data_dir: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(busybox_disk), str(own_data_dir)],
                             stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, f"child did not boot its VMs: {line!r}"
        assert all(Path(f"/proc/{p}").exists() for p in pids)
        assert len(list((own_data_dir / "run").glob("vm-*"))) == 2
    finally:
        child.kill()
        child.wait()
    sweep_once(own_data_dir)  # what the next driver start in this data dir runs first
    assert all(_gone(p) for p in pids)
    assert qemu_processes_for(own_data_dir) == []
    assert list((own_data_dir / "run").glob("vm-*")) == []


def test_sweep_kills_an_orphaned_qemu_and_spares_live_owners(own_data_dir: Path) -> None:
    orphan_dir = create_run_dir(own_data_dir)
    # An owner that no longer exists (a pid above the kernel's pid_max, or a reused pid with another start).
    owner = json.loads((orphan_dir / "owner.json").read_text()) | {"pid": 2**22 + 7, "start_time": 1}
    (orphan_dir / "owner.json").write_text(json.dumps(owner))
    # A QEMU that escaped the parent-death signal (started without it), paused, in the orphaned run dir.
    qemu = subprocess.Popen([qemu_binary(), "-M", "microvm", "-accel", "tcg", "-nodefaults", "-display", "none",
                             "-S", "-pidfile", "qemu.pid", "-m", "64M"], cwd=orphan_dir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    live_dir = create_run_dir(own_data_dir)  # owned by this (live) process
    try:
        deadline = time.monotonic() + 10
        while not (orphan_dir / "qemu.pid").exists():
            assert time.monotonic() < deadline, "QEMU did not write its pidfile"
            time.sleep(0.02)
        report = sweep_stale(own_data_dir)
        qemu.wait(timeout=10)
        assert report.killed == [qemu.pid]
        assert report.removed == [orphan_dir]
        assert not orphan_dir.exists() and live_dir.exists()
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()


def test_a_failed_boot_reports_the_console_and_leaves_nothing(own_data_dir: Path, tmp_path: Path) -> None:
    not_ext4 = tmp_path / "zeros.img"
    with not_ext4.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    with pytest.raises(BootError, match=r"(?s)guest console.*boot failed: mount root disk"):
        boot(not_ext4, data_dir=own_data_dir, memory_mib=128, boot_timeout=60)
    assert qemu_processes_for(own_data_dir) == []
    assert list((own_data_dir / "run").glob("vm-*")) == []
