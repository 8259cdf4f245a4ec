"""The sweep over real processes, mounts and directories (no VM, no dockerd): everything a dead owner left in a
data directory is stopped, unmounted or removed; what a live owner holds is never touched (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amber.buildkit.daemon import DockerdLayout
from amber.cli import app
from amber.host import mounts, processes
from amber.host.owners import Owner, process_start_time, read_owner, write_owner
from amber.sweep import sweep
from tests.support.server import running_server


def dead_owner() -> Owner:
    """The record of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(child.pid)
    child.wait()
    return Owner(child.pid, start)


def stand_in(*args: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A long-sleeping process whose command line names ``args`` (a stand-in for dockerd, a shim, QEMU)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", *args], cwd=cwd)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # by PID, whatever the test did
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def bind_mounts() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for path in reversed(made):
        while mounts.is_mount_point(path):
            subprocess.run(["umount", "-l", str(path)], check=False)


def bind(path: Path, made: list[Path]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    made.append(path)
    return path


def test_owner_records_tell_a_live_owner_from_a_dead_or_reused_pid(tmp_path: Path) -> None:
    write_owner(tmp_path / "owner.json")
    assert read_owner(tmp_path / "owner.json") == Owner.current() and Owner.current().alive
    assert not dead_owner().alive
    me = Owner.current()
    assert not Owner(me.pid, (me.start_time or 0) - 1).alive  # same PID, another process
    (tmp_path / "bad.json").write_text("{not json")
    assert read_owner(tmp_path / "bad.json") is not None and not read_owner(tmp_path / "bad.json").alive  # type: ignore[union-attr]
    assert read_owner(tmp_path / "missing.json") is None


def test_mounts_under_a_directory_deepest_first_and_unmounted(tmp_path: Path, bind_mounts: list[Path]) -> None:
    outer = bind(tmp_path / "a b", bind_mounts)  # a space: mountinfo escapes it
    inner = bind(outer / "inner", bind_mounts)
    assert mounts.mounts_under(tmp_path) == [inner, outer]
    assert mounts.unmount(inner) is None and mounts.unmount(outer) is None
    assert mounts.mounts_under(tmp_path) == []


def test_everything_a_dead_owner_left_is_swept(tmp_path: Path, started: list[subprocess.Popen[bytes]],
                                               bind_mounts: list[Path]) -> None:
    data = tmp_path / "data"
    # A dockerd whose Amber died: the daemon (by pidfile), a shim naming the exec root, a build step working in
    # a layer, and its mounts.
    layout = DockerdLayout(data / "dockerd")
    layout.data_root.mkdir(parents=True)
    layout.exec_root.mkdir(parents=True, exist_ok=True)
    write_owner(layout.owner_file, dead_owner())
    dockerd = stand_in(f"--data-root={layout.data_root}")
    layout.pidfile.write_text(str(dockerd.pid))
    shim = stand_in("-address", str(layout.exec_root / "containerd" / "containerd.sock"))
    step_dir = layout.data_root / "overlay2" / "abc" / "merged"
    step_dir.mkdir(parents=True)
    step = stand_in(cwd=step_dir)
    started.extend([dockerd, shim, step])
    bind(layout.data_root, bind_mounts)
    bind(step_dir, bind_mounts)
    # A QEMU run directory, a snapshot staging directory and a guest file half-written by dead owners.
    run_dir = data / "run" / "vm-0123456789ab"
    run_dir.mkdir(parents=True)
    write_owner(run_dir / "owner.json", dead_owner())
    qemu = stand_in(str(run_dir / "qmp.sock"), cwd=run_dir)
    started.append(qemu)
    staging = data / "artifacts" / ".tb_1.tmp-4242-vm-0123456789ab"
    (staging / "memory").mkdir(parents=True)
    guest_tmp = data / "guest" / f".vmlinux.tmp-{dead_owner().pid}"
    guest_tmp.parent.mkdir()
    guest_tmp.write_bytes(b"half")
    bind(run_dir / "mnt", bind_mounts)  # a mount inside debris is unmounted before the tree is removed

    report = sweep(data)

    assert report.failed == []
    for proc in (dockerd, shim, step, qemu):
        assert not processes.running(proc.pid), proc.args
    assert mounts.mounts_under(data) == [] and step_dir in report.unmounted
    assert not layout.exec_root.exists() and not layout.owner_file.exists()
    assert not run_dir.exists() and not staging.exists() and not guest_tmp.exists()
    assert sweep(data).empty  # nothing left for a second sweep


def test_what_a_live_owner_holds_is_left_alone(tmp_path: Path, started: list[subprocess.Popen[bytes]],
                                               bind_mounts: list[Path]) -> None:
    data = tmp_path / "data"
    layout = DockerdLayout(data / "dockerd")
    layout.data_root.mkdir(parents=True)
    write_owner(layout.owner_file)  # this process: a running server
    dockerd = stand_in(f"--data-root={layout.data_root}")
    started.append(dockerd)
    layout.pidfile.write_text(str(dockerd.pid))
    bind(layout.data_root, bind_mounts)
    run_dir = data / "run" / "vm-aaaaaaaaaaaa"
    run_dir.mkdir(parents=True)
    write_owner(run_dir / "owner.json")
    staging = data / "artifacts" / f".tb_2.tmp-{os.getpid()}-vm-aaaaaaaaaaaa"  # a snapshot in progress
    staging.mkdir(parents=True)
    guest_tmp = data / "guest" / f".initramfs.tmp-{os.getpid()}"
    guest_tmp.parent.mkdir()
    guest_tmp.write_bytes(b"being written")

    assert sweep(data).empty
    assert processes.running(dockerd.pid) and mounts.is_mount_point(layout.data_root)
    assert run_dir.exists() and staging.exists() and guest_tmp.exists()


def test_a_running_server_sweeps_on_start_and_periodically(
    tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """``amber serve`` sweeps before it serves, then every AMBER_SWEEP_INTERVAL_SECS, and lists what it did."""
    data = tmp_path / "data"

    def orphan_vm(name: str) -> tuple[Path, subprocess.Popen[bytes]]:
        run_dir = data / "run" / name
        run_dir.mkdir(parents=True)
        write_owner(run_dir / "owner.json", dead_owner())
        qemu = stand_in(str(run_dir / "qmp.sock"), cwd=run_dir)
        started.append(qemu)
        return run_dir, qemu

    before_start, early = orphan_vm("vm-000000000001")
    with running_server(data, workers=0, env={"AMBER_SWEEP_INTERVAL_SECS": "0.5"}) as server:
        assert not before_start.exists() and not processes.running(early.pid)  # swept before serving
        later, late = orphan_vm("vm-000000000002")
        deadline = time.monotonic() + 30
        while later.exists() or processes.running(late.pid):
            assert time.monotonic() < deadline, "the periodic sweep never ran"
            time.sleep(0.1)
    log = server.log_path.read_text()
    assert log.count("swept what dead Amber processes left") >= 2, log


def test_cache_usage_sweeps_and_lists_what_it_cannot_remove(tmp_path: Path) -> None:
    """``amber cache usage`` removes what dead owners left and names what stays (here an immutable file in a
    snapshot staging directory: even root cannot delete it), exiting 1."""
    data = tmp_path / "data"
    removable = data / "artifacts" / ".tb_a.tmp-1-vm-00000000000a"
    stuck = data / "artifacts" / ".tb_b.tmp-1-vm-00000000000b"
    removable.mkdir(parents=True)
    stuck.mkdir()
    pinned = stuck / "state.bin"
    pinned.write_bytes(b"x")
    subprocess.run(["chattr", "+i", str(pinned)], check=True)
    try:
        result = CliRunner().invoke(app, ["cache", "usage", "--data-dir", str(data)])
        assert result.exit_code == 1, result.output
        assert not removable.exists() and stuck.exists()
        assert f"cannot remove {stuck}: " in result.output and "Operation not permitted" in result.output
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], check=True)
