"""Reusable snapshots and forks through the unmodified SDK: restored children see the snapshot's files and
running processes, the source keeps running, and machines diverge afterwards."""

from __future__ import annotations

import time

import pytest
from nullspace import Machine, Snapshot
from nullspace.errors import ConflictError, NotFoundError

from tests.machines.conftest import Machines, details, run, start

pytestmark = pytest.mark.vm

COUNTER = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done"


def counter_values(machine: Machine, pid: int) -> list[int]:
    return [int(x) for x in machine.commands.get_logs(pid).stdout.split()]


def test_snapshot_restores_files_and_processes_into_many_machines(machines: Machines) -> None:
    source = Machine.create(template=machines.template, **machines.acme)
    children: list[Machine] = []
    try:
        source.files.write("/workspace/at-snapshot.txt", "written before the snapshot")
        counter = start(source, COUNTER, shell=True)
        time.sleep(1.5)
        before = counter_values(source, counter.pid)
        snapshot = source.create_snapshot()
        after = counter_values(source, counter.pid)
        assert snapshot.machine_id == source.id and snapshot.size_bytes > 0
        assert Snapshot.get(snapshot.id, **machines.acme).id == snapshot.id
        assert snapshot.id in {s.id for s in Snapshot.list(**machines.acme)}
        assert snapshot.id not in {s.id for s in Snapshot.list(**machines.other)}

        for _ in range(3):
            children.append(Machine.create(snapshot_id=snapshot.id, **machines.acme))
        time.sleep(1.0)
        for child in children:
            assert details(child).status.value == "running"
            assert child.files.read("/workspace/at-snapshot.txt") == "written before the snapshot"
            values = counter_values(child, counter.pid)
            assert values == list(range(1, len(values) + 1)), "the child's counter skipped or repeated"
            at_restore = len(values)
            assert at_restore > len(before) - 1, "the child's counter started before the snapshot's value"
            assert any(p.pid == counter.pid and p.running for p in child.commands.list())

        # The source never stopped: its counter kept going through the snapshot, without a repeat or a hole.
        time.sleep(0.6)
        source_values = counter_values(source, counter.pid)
        assert source_values == list(range(1, len(source_values) + 1))
        assert len(source_values) > len(after) >= len(before)

        with pytest.raises(ConflictError) as in_use:
            Snapshot.delete(snapshot.id, **machines.acme)
        assert in_use.value.code == "snapshot_in_use"
        for child in children:
            child.kill()
        Snapshot.delete(snapshot.id, **machines.acme)
        with pytest.raises(NotFoundError):
            Snapshot.get(snapshot.id, **machines.acme)
    finally:
        for child in children:
            Machine.kill_by_id(child.id, **machines.acme)
        source.kill()


def test_forks_diverge_from_their_parent_and_each_other(machines: Machines) -> None:
    parent = Machine.create(template=machines.template, **machines.acme)
    forks: list[Machine] = []
    try:
        parent.files.write("/workspace/shared.txt", "from the parent")
        forks = [parent.fork(), parent.fork()]
        assert len({parent.id, *(f.id for f in forks)}) == 3
        for i, machine in enumerate([parent, *forks]):
            assert machine.files.read("/workspace/shared.txt") == "from the parent"
            machine.files.write("/workspace/own.txt", f"machine {i}")
        for i, machine in enumerate([parent, *forks]):
            assert machine.files.read("/workspace/own.txt") == f"machine {i}"
        run(forks[0], "rm", ["/workspace/shared.txt"])
        assert not forks[0].files.exists("/workspace/shared.txt")
        assert parent.files.exists("/workspace/shared.txt") and forks[1].files.exists("/workspace/shared.txt")
        assert details(parent).status.value == "running"
    finally:
        for fork in forks:
            fork.kill()
        parent.kill()
