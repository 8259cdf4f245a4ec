"""Machines across server restarts: a crash (SIGKILL) loses running machines (marked ``error``/``lost``, no QEMU
left) and keeps hibernated ones; a graceful stop (SIGTERM) hibernates running machines and brings them back."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nullspace import Machine, Template, TemplateWarmPool, wait_for_port

from tests.contract.conftest import Conn, data_dir_with_guest, leftover_vms
from tests.machines.conftest import details, info_of, start
from tests.support.images import push_busybox_image
from tests.support.registry import running_registry
from tests.support.server import AmberServer

pytestmark = pytest.mark.vm


def qemu_pids_of(data_dir: Path) -> list[int]:
    """QEMU processes whose run directory is under ``data_dir``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and cwd.startswith(str(data_dir)):
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AmberServer, str, str]]:
    data_dir = data_dir_with_guest(tmp_path_factory)
    with running_registry() as registry:
        base = push_busybox_image(registry)
        server = AmberServer(data_dir, workers=1)
        server.start()
        try:
            key = server.create_key("acme")
            template = Template.from_image(base).set_start_cmd("httpd -f -p 8080 -h /tmp", wait_for_port(8080))
            Template.build(template, "restart:stable", api_key=key, base_url=server.url)
            yield server, key, "restart:stable"
        finally:
            server.stop()
    assert not qemu_pids_of(data_dir), "QEMU outlived the server"
    assert not leftover_vms(data_dir), "VM run directories left behind"


def test_sigkill_loses_running_machines_and_keeps_hibernated_ones(server: tuple[AmberServer, str, str]) -> None:
    amber, key, template = server
    conn: Conn = {"api_key": key, "base_url": amber.url}
    running = [Machine.create(template=template, **conn) for _ in range(5)]
    paused = [Machine.create(template=template, **conn) for _ in range(2)]
    for i, machine in enumerate(paused):
        machine.files.write("/tmp/kept.txt", f"paused-{i}")
        machine.hibernate()
    assert len(qemu_pids_of(amber.data_dir)) == 5

    amber.kill()
    deadline = time.monotonic() + 15
    while qemu_pids_of(amber.data_dir):
        assert time.monotonic() < deadline, "QEMU processes survived the server's SIGKILL"
        time.sleep(0.1)
    amber.start()

    for machine in running:
        info = info_of(machine.id, conn)
        assert info.status.value == "error"
    raw = amber.client(key).get(f"/v1/machines/{running[0].id}").json()
    assert raw["end_reason"] == "lost"
    assert not leftover_vms(amber.data_dir), "run directories of the lost machines were left behind"
    for i, machine in enumerate(paused):
        resumed = Machine.connect(machine.id, **conn)
        assert resumed.files.read("/tmp/kept.txt") == f"paused-{i}"
        resumed.kill()
    for machine in running:
        Machine.kill_by_id(machine.id, **conn)
    assert not qemu_pids_of(amber.data_dir)


def test_sigterm_hibernates_running_machines_and_they_come_back(server: tuple[AmberServer, str, str]) -> None:
    amber, key, template = server
    conn: Conn = {"api_key": key, "base_url": amber.url}
    machine = Machine.create(template=template, **conn)
    machine.files.write("/tmp/across-restart.txt", "survived")
    counter = start(machine, "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done", shell=True)
    time.sleep(0.5)
    amber.stop()
    assert not qemu_pids_of(amber.data_dir)
    amber.start()
    again = Machine.connect(machine.id, **conn)
    assert details(again).status.value == "running"
    assert again.files.read("/tmp/across-restart.txt") == "survived"
    assert any(p.pid == counter.pid and p.running for p in again.commands.list())
    again.kill()


def test_warm_pools_refill_after_a_crash_and_leave_no_parked_vm(server: tuple[AmberServer, str, str]) -> None:
    amber, key, template = server
    conn: Conn = {"api_key": key, "base_url": amber.url}
    pool = TemplateWarmPool.create(template, name="restart", min_ready=2, max_ready=2, **conn)
    try:
        pool.wait_until_ready(timeout_secs=180)
        assert len(qemu_pids_of(amber.data_dir)) == 2
        amber.kill()
        deadline = time.monotonic() + 15
        while qemu_pids_of(amber.data_dir):
            assert time.monotonic() < deadline, "parked VMs survived the server's SIGKILL"
            time.sleep(0.1)
        amber.start()
        again = TemplateWarmPool.get(pool.id, **conn)
        again.wait_until_ready(timeout_secs=180)
        assert len(qemu_pids_of(amber.data_dir)) == 2
        with Machine.create(template=template, warm_pool=pool.id, warm_pool_mode="require",
                            warm_pool_wait_ms=30_000, **conn) as machine:
            assert machine.get_info().status.value == "running"  # type: ignore[union-attr]
    finally:
        TemplateWarmPool.get(pool.id, **conn).delete()
    deadline = time.monotonic() + 30
    while qemu_pids_of(amber.data_dir):
        assert time.monotonic() < deadline, "a deleted pool kept parked VMs"
        time.sleep(0.2)
