"""Jobs survive snapshot and restore: a restored VM's agent keeps its job table and base environment, and
the host takes running commands over with ``restore(attach=…)`` / ``agent.attach(id)``."""

from __future__ import annotations

import errno
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from amber.vm import AgentError, Job, boot, restore

COUNTER = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done"


class Lines:
    """Collects the counter's output (from the reader thread) and tells the numbers seen."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        with self._lock:
            self._buf += data

    def numbers(self) -> list[int]:
        with self._lock:
            text = bytes(self._buf).decode()
        return [int(n) for n in text.split("\n")[:-1] if n.strip().isdigit()]


def until(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_running_command_keeps_streaming_across_two_restores(busybox_disk: Path, data_dir: Path,
                                                                tmp_path: Path) -> None:
    before = Lines()
    with boot(busybox_disk, data_dir=data_dir, memory_mib=256) as vm:
        vm.agent.set_env({"MACHINE_ENV": "from-create"})
        job = vm.agent.start(shell=COUNTER, stdin_open=True, on_stdout=before.feed)
        pid = job.wait_started(30)
        until(lambda: len(before.numbers()) >= 3, "counter output before the snapshot")
        rid, next_id = job.request_id, vm.agent.next_request_id
        first = vm.snapshot(tmp_path / "gen1")
    last_before = before.numbers()[-1]

    after = Lines()
    ended: list[Job] = []
    with restore(first.directory, data_dir=data_dir, attach=[rid], first_request_id=next_id) as box:
        assert box.agent.next_request_id > next_id  # post-restore used ids above every old one
        attached = box.agent.attach(rid, on_stdout=after.feed, on_exit=ended.append)
        assert attached.wait_started(30) == pid and attached.stdin_open
        until(lambda: bool(after.numbers()) and after.numbers()[-1] >= last_before + 3, "output after restore")
        seen = after.numbers()
        assert seen == list(range(seen[0], seen[0] + len(seen)))  # in order, nothing lost after the first
        assert seen[0] <= last_before + 30, (seen[0], last_before)  # the same process went on counting
        # The base environment lived in the agent's memory, so it is back too.
        assert box.exec(shell='echo "$MACHINE_ENV"').stdout == b"from-create\n"
        # A restored VM can be snapshotted again, with the job still attached-to-be.
        next_id2 = box.agent.next_request_id
        second = box.snapshot(tmp_path / "gen2")
    assert ended and ended[0].error is not None  # the VM's end ends the attached job on this connection

    again = Lines()
    with restore(second.directory, data_dir=data_dir, attach=[rid], first_request_id=next_id2) as box2:
        job2 = box2.agent.attach(rid, on_stdout=again.feed)
        assert job2.wait_started(30) == pid
        until(lambda: len(again.numbers()) >= 3, "output after the second restore")
        job2.signal(signal.SIGTERM)
        result = job2.wait(30)
        assert result.signal == signal.SIGTERM and result.pid == pid
        # An id the guest does not know (never started, or ended before the snapshot) is refused clearly.
        unknown = box2.agent.attach(next_id2 + 10_000)
        with pytest.raises(AgentError, match="ended before it was attached") as e:
            unknown.wait_started(30)
        assert e.value.errno == errno.ENOENT


def test_output_of_unattached_jobs_is_dropped_without_stalling_them(busybox_disk: Path, data_dir: Path,
                                                                    tmp_path: Path) -> None:
    # Each round writes more than a pipe holds: the job blocks at once if its output is not read, and a
    # 4 KiB window that nobody acknowledges would stop the guest from reading it.
    chatty = "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/rounds; head -c 100000 /dev/zero; done"
    attached_too = chatty.replace("/dev/shm/rounds", "/dev/shm/rounds2")
    with boot(busybox_disk, data_dir=data_dir, memory_mib=256) as vm:
        job = vm.agent.start(shell=chatty, window=4096, on_stdout=lambda _d: None)
        job.wait_started(30)
        other = vm.agent.start(shell=attached_too, window=4096, on_stdout=lambda _d: None)
        other.wait_started(30)
        until(lambda: int(vm.exec(["cat", "/dev/shm/rounds"]).stdout or 0) >= 3, "rounds before the snapshot")
        art = vm.snapshot(tmp_path / "art")
    received = bytearray()
    with restore(art.directory, data_dir=data_dir, attach=[other.request_id]) as box:  # only `other` attached
        mine = box.agent.attach(other.request_id, on_stdout=received.extend)
        mine.wait_started(30)
        start = int(box.exec(["cat", "/dev/shm/rounds"]).stdout)
        until(lambda: int(box.exec(["cat", "/dev/shm/rounds"]).stdout) >= start + 5, "rounds after the restore")
        assert box.agent.dropped_bytes > 0
        # The attached one is acknowledged at its own window's pace: far more than one window arrives.
        until(lambda: len(received) > 1_000_000, "output of the attached windowed job")
