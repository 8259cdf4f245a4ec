"""Killing the server (SIGKILL) during a build: after a restart the running build has ended as ``interrupted``
(visible through the SDK), no VM, run directory or work directory is left, and a build that was only queued
is resumed and completes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nullspace import BuildError, Template, TemplateBuild

from tests.contract.conftest import Conn, data_dir_with_guest, leftover_vms
from tests.support.images import push_busybox_image
from tests.support.registry import Registry
from tests.support.server import AmberServer, running_server

pytestmark = pytest.mark.vm


def qemu_pids_for(data_dir: Path) -> list[int]:
    """QEMU processes whose command line mentions ``data_dir`` (found through /proc, never by name alone)."""
    needle = str(data_dir.resolve()).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and needle in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def server(database_url: str, registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmberServer]:
    data_dir = data_dir_with_guest(tmp_path_factory)
    with running_server(data_dir, database_url, workers=1) as srv:
        yield srv


def test_sigkill_during_a_build(server: AmberServer, registry: Registry) -> None:
    base = push_busybox_image(registry)
    conn: Conn = {"api_key": server.create_key("acme"), "base_url": server.url}
    running = Template.build_in_background(Template.from_image(base).run_cmd("sleep 300"), "sleeper", **conn)
    queued = Template.build_in_background(Template.from_image(base).run_cmd("echo queued"), "queued", **conn)
    deadline = time.monotonic() + 120
    while not any(e.phase == "step" for e in running.get_status().entries):
        assert time.monotonic() < deadline, "the build never reached its step"
        time.sleep(0.3)
    assert queued.get_status().build.status.value == "waiting"
    build_vms = qemu_pids_for(server.data_dir)
    assert build_vms, "expected the build VM to be running"
    old_pid = server.pid

    server.kill()
    assert not _alive(old_pid)
    server.start()

    reconnected = TemplateBuild.connect(running.build_id, **conn)
    assert reconnected.status.value == "error"
    assert reconnected.failure_phase == "interrupted"
    assert reconnected.error_detail is not None and reconnected.error_detail.phase.value == "interrupted"
    assert reconnected.error_detail.retryable is True
    assert "interrupted" in (reconnected.error or "")
    with pytest.raises(BuildError) as failure:
        reconnected.wait_until_terminal()
    assert failure.value.phase is not None and failure.value.phase.value == "interrupted"
    kinds = [e.kind.value for e in reconnected.logs(offset=0, follow=True)]
    assert kinds[0] == "start" and kinds[-1] == "error"
    assert not [pid for pid in build_vms if _alive(pid)], "the killed server's build VM is still running"
    assert not (server.data_dir / "builds" / running.build_id).exists()

    resumed = TemplateBuild.connect(queued.build_id, **conn)
    resumed.wait_until_terminal(poll_interval=0.3)
    assert resumed.status.value == "ready"
    assert not qemu_pids_for(server.data_dir) and not leftover_vms(server.data_dir)
    for handle in (running, queued, reconnected, resumed):
        handle.close()


def _alive(pid: int) -> bool:
    """Running (a zombie left to an init that reaps slowly counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_during_a_build_stops_it_cleanly(server: AmberServer, registry: Registry) -> None:
    base = push_busybox_image(registry)
    conn: Conn = {"api_key": server.create_key("acme"), "base_url": server.url}
    handle = Template.build_in_background(Template.from_image(base).run_cmd("sleep 301"), "term", **conn)
    deadline = time.monotonic() + 120
    while not any(e.phase == "step" for e in handle.get_status().entries):
        assert time.monotonic() < deadline, "the build never reached its step"
        time.sleep(0.3)
    build_vms = qemu_pids_for(server.data_dir)
    server.stop()  # SIGTERM: the pipeline is cancelled and stops its VM before the process exits
    assert not [pid for pid in build_vms if _alive(pid)]
    assert not leftover_vms(server.data_dir)
    server.start()
    after = TemplateBuild.connect(handle.build_id, **conn)
    assert after.status.value == "error" and after.failure_phase == "interrupted"
    assert after.error is not None and "shut down" in after.error
    handle.close()
    after.close()


def test_phase_timeout_fails_the_build_clearly(server: AmberServer, registry: Registry) -> None:
    base = push_busybox_image(registry)
    server.stop()
    server.extra_env["AMBER_PHASE_TIMEOUT_SECS"] = "12"  # above VM boot time under load
    server.start()
    try:
        conn: Conn = {"api_key": server.create_key("acme"), "base_url": server.url}
        handle = Template.build_in_background(Template.from_image(base).run_cmd("sleep 302"), "slowstep", **conn)
        with pytest.raises(BuildError) as failure:
            handle.wait_until_terminal(poll_interval=0.3)
        assert "phase step timed out after 12 s" in str(failure.value)
        assert handle.failure_phase == "build_step" and handle.error_detail is not None
        assert handle.error_detail.details == {"reason": "timeout"}
        deadline = time.monotonic() + 30
        while leftover_vms(server.data_dir) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not leftover_vms(server.data_dir)
        handle.close()
    finally:
        server.stop()
        del server.extra_env["AMBER_PHASE_TIMEOUT_SECS"]
        server.start()
