"""`amber vm run / snapshot / restore` as a person uses them (real processes, real VMs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.network import HostListener, OutsideWorld

REPO = Path(__file__).resolve().parents[2]


def amber(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMBER_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "amber.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_vm_run_with_internet_streams_output_and_exits_with_the_status(
    busybox_disk: Path, data_dir: Path, tmp_path: Path
) -> None:
    with OutsideWorld(tmp_path) as outside, HostListener() as host:
        done = amber(data_dir, "vm", "run", str(busybox_disk), "--memory", "192", "--cpus", "2", "--internet", "--",
                     "sh", "-c", f"nc {outside.address} {outside.port} </dev/null && nproc "
                                 "&& free -m | grep -o 'Mem: *[0-9]*' "
                                 f"&& (nc 10.0.2.2 {host.port} </dev/null || echo host-refused) "
                                 "&& echo to-stderr >&2 && exit 7")
        assert host.connections == []
    assert done.returncode == 7, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["outside-world", "2"]
    assert 150 <= int(lines[2].split()[1]) <= 192  # guest-visible RAM: 192 MiB minus the kernel's share
    assert lines[3] == "host-refused"
    assert "to-stderr" in done.stderr and "booting the VM: done in" in done.stderr


def test_vm_snapshot_then_restore(busybox_disk: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    done = amber(data_dir, "vm", "snapshot", str(busybox_disk), "--memory", "192", "--out", str(out),
                 "--start-cmd", "echo 41 > /dev/shm/v; exec httpd -f -p 8080 -h /www", "--ready-tcp", "8080")
    assert done.returncode == 0, done.stderr
    assert "snapshot written to" in done.stdout and (out / "manifest.json").exists()
    done = amber(data_dir, "vm", "restore", str(out), "--", "sh", "-c", "cat /dev/shm/v; pidof httpd >/dev/null")
    assert (done.returncode, done.stdout) == (0, "41\n"), done.stderr
    done = amber(data_dir, "vm", "restore", str(tmp_path / "missing"), "--", "true")
    assert done.returncode == 1 and "does not exist" in done.stderr
    done = amber(data_dir, "vm", "run", str(busybox_disk), "--", "/no/such/command")
    assert done.returncode == 127 and "No such file" in done.stderr
