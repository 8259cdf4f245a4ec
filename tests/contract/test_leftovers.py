"""No leftovers after a crash or a timeout (issue 12): SIGKILL of the server during a Dockerfile ``RUN`` and during
a snapshot, then a restart, leave no dockerd, containerd or QEMU without a live Amber parent, no mount under the
data directory or dockerd's exec root, no ``*.tmp-*`` staging and no work directory; a snapshot that times out
(no crash) removes its partial artifact at once.

A snapshot is made to take long by stopping (SIGSTOP) the build VM's QEMU while the build waits for readiness:
the snapshot then starts, creates its staging directory and blocks on the guest.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nullspace import BuildError, Template, TemplateBuild, wait_for_timeout

from amber.buildkit.daemon import DockerdLayout
from amber.host import mounts, processes
from tests.contract.conftest import Conn, data_dir_with_guest
from tests.support.images import push_busybox_image
from tests.support.registry import Registry
from tests.support.server import AmberServer, running_server

pytestmark = [pytest.mark.vm, pytest.mark.docker]

_DAEMONS = ("dockerd", "containerd", "qemu-system", "runc")


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def has_ancestor(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = parent(pid)
        if pid == ancestor:
            return True
    return False


def leftovers(server: AmberServer) -> list[str]:
    """Everything Amber made in its data directory that has no live Amber owner."""
    data_dir = server.data_dir.resolve()
    exec_root = DockerdLayout(data_dir / "dockerd").exec_root
    live = server.pid if server.proc is not None and server.proc.poll() is None else -1
    found = []
    for pid in processes.pids_using(data_dir, exec_root):
        line = processes.cmdline(pid)
        if any(name in line for name in _DAEMONS) and not has_ancestor(pid, live):
            found.append(f"process {pid}: {line[:120]}")
    found += [f"mount {m}" for m in mounts.mounts_under(data_dir) + mounts.mounts_under(exec_root)]
    for path in data_dir.rglob("*.tmp-*"):
        if data_dir / "dockerd" / "data" not in path.parents:  # dockerd's own store is not Amber's naming
            found.append(f"staging {path}")
    builds = data_dir / "builds"
    found += [f"work directory {p}" for p in builds.iterdir()] if builds.is_dir() else []
    return found


def eventually(check: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def entries(handle: TemplateBuild) -> list[tuple[str | None, str]]:
    return [(e.phase, e.message) for e in handle.get_status().entries]


def qemu_pid(server: AmberServer) -> int:
    needle = str(server.data_dir.resolve())
    pids = [p for p in processes.pids_using(server.data_dir) if "qemu-system" in processes.cmdline(p)
            and needle in processes.cmdline(p)]  # fmt: skip
    assert len(pids) == 1, pids
    return pids[0]


def staging_dirs(server: AmberServer) -> list[Path]:
    artifacts = server.data_dir / "artifacts"
    return sorted(artifacts.glob(".*.tmp-*")) if artifacts.is_dir() else []


@pytest.fixture(scope="module")
def server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmberServer]:
    with running_server(data_dir_with_guest(tmp_path_factory), workers=1) as srv:
        yield srv
    assert leftovers(srv) == []


@pytest.fixture(scope="module")
def conn(server: AmberServer) -> Conn:
    return {"api_key": server.create_key("acme"), "base_url": server.url}


@pytest.fixture(scope="module")
def base(registry: Registry) -> str:
    return push_busybox_image(registry)


def test_sigkill_during_a_dockerfile_run_leaves_nothing(server: AmberServer, conn: Conn, base: str) -> None:
    dockerfile = f"FROM {base}\nRUN echo started-run-$$ && sleep 300\n"
    handle = Template.build_in_background(Template.from_dockerfile_content(dockerfile), "df-killed", **conn)
    eventually(lambda: any(m.startswith("started-run-") for _, m in entries(handle)), "the RUN to start")
    layout = DockerdLayout(server.data_dir.resolve() / "dockerd")
    assert mounts.mounts_under(layout.data_root), "expected dockerd's mounts while the RUN runs"

    server.kill()
    server.start()  # sweeps before it serves
    assert leftovers(server) == []
    after = TemplateBuild.connect(handle.build_id, **conn)
    assert after.status.value == "error" and after.failure_phase == "interrupted"
    server.stop()  # and a graceful stop after the restart leaves nothing either
    assert leftovers(server) == []
    server.start()
    handle.close()
    after.close()


def stop_vm_during_readiness(server: AmberServer, handle: TemplateBuild) -> int:
    """SIGSTOP the build VM while the build waits on its readiness probe; returns the QEMU pid."""
    eventually(lambda: any(phase == "readiness" for phase, _ in entries(handle)), "the readiness phase")
    pid = qemu_pid(server)
    os.kill(pid, signal.SIGSTOP)
    return pid


def slow_snapshot_template(base: str) -> Template:
    return Template.from_image(base).run_cmd("true").set_start_cmd("sleep 100000", wait_for_timeout(8000))


def test_sigkill_during_a_snapshot_leaves_nothing(server: AmberServer, conn: Conn, base: str) -> None:
    handle = Template.build_in_background(slow_snapshot_template(base), "snap-killed", **conn)
    qemu = stop_vm_during_readiness(server, handle)
    try:
        eventually(lambda: bool(staging_dirs(server)), "the snapshot's staging directory")
        assert any(phase == "snapshot" for phase, _ in entries(handle))
        server.kill()
        server.start()
        assert leftovers(server) == []
        assert not processes.running(qemu)
        after = TemplateBuild.connect(handle.build_id, **conn)
        assert after.status.value == "error" and after.failure_phase == "interrupted"
        assert not (server.data_dir / "artifacts" / handle.build_id).exists()
        after.close()
    finally:
        if processes.running(qemu):  # never leave the stopped VM behind, whatever failed
            processes.kill_and_wait(qemu)
    handle.close()


def test_a_snapshot_timeout_removes_the_partial_artifact_at_once(server: AmberServer, conn: Conn,
                                                                  base: str) -> None:
    server.stop()
    server.extra_env["AMBER_PHASE_TIMEOUT_SECS"] = "20"  # above boot and the 8 s readiness wait under load
    server.start()
    try:
        handle = Template.build_in_background(slow_snapshot_template(base), "snap-timeout", **conn)
        qemu = stop_vm_during_readiness(server, handle)
        try:
            eventually(lambda: bool(staging_dirs(server)), "the snapshot's staging directory")
            with pytest.raises(BuildError) as failure:
                handle.wait_until_terminal(poll_interval=0.3)
            assert "phase snapshot timed out after 20 s" in str(failure.value)
            assert handle.failure_phase == "snapshot"
            # At once: when the build is reported failed, its partial artifact and its VM are already gone.
            assert staging_dirs(server) == [] and not (server.data_dir / "artifacts" / handle.build_id).exists()
            assert not processes.running(qemu)
            assert leftovers(server) == []
        finally:
            if processes.running(qemu):
                processes.kill_and_wait(qemu)
        handle.close()
    finally:
        server.stop()
        del server.extra_env["AMBER_PHASE_TIMEOUT_SECS"]
        server.start()
