"""Commands, files and probes through the guest agent of one booted busybox VM."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from amber.vm import AgentError, MicroVM
from amber.vm.protocol import HEADER, MsgType, encode_field, encode_frame


def test_agent_is_pid_1_with_the_expected_mounts(vm: MicroVM) -> None:
    r = vm.exec(["sh", "-c", "cat /proc/1/comm; cut -d' ' -f2,3 /proc/mounts; hostname; ip addr show lo"])
    out = r.stdout.decode()
    assert r.exit_code == 0, r.stderr
    assert out.splitlines()[0] == "init"
    for mount in ("/ ext4", "/dev devtmpfs", "/proc proc", "/sys sysfs", "/dev/pts devpts", "/dev/shm tmpfs"):
        assert mount in out
    assert "amber" in out.splitlines()
    assert "127.0.0.1" in out


def test_root_and_another_user_with_groups(vm: MicroVM) -> None:
    assert vm.exec(["id"]).stdout.decode().startswith("uid=0(root) gid=0(root)")
    app = vm.exec(["id"], user="app").stdout.decode()
    assert "uid=1000(app) gid=1000(app)" in app and "50(staff)" in app
    assert vm.exec(["id", "-u"], user="1000:50").stdout == b"1000\n"
    assert vm.exec(["id", "-g"], user="app:staff").stdout == b"50\n"
    home = vm.exec(["sh", "-c", "echo $HOME; whoami"], user="app").stdout
    assert home == b"/home/app\napp\n"


def test_env_cwd_and_stdin(vm: MicroVM) -> None:
    r = vm.exec(["sh", "-c", 'echo "$GREETING $OTHER"; pwd; echo $PATH'], env={"GREETING": "hi there", "OTHER": "x=y"},
                cwd="/home/app")
    assert r.stdout.decode().splitlines() == ["hi there x=y", "/home/app",
                                             "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert vm.exec(["cat"], stdin=b"line one\nline two\n").stdout == b"line one\nline two\n"
    assert vm.exec(["cat"]).stdout == b""  # no stdin → /dev/null, not a hang
    big = bytes(range(256)) * 12_000  # 3 MB: several stdin chunks
    r = vm.exec(["sha256sum"], stdin=big)
    assert r.stdout.split()[0].decode() == hashlib.sha256(big).hexdigest()


def test_shell_form_and_exit_codes(vm: MicroVM) -> None:
    assert vm.exec(shell="exit 42").exit_code == 42
    r = vm.exec(shell="echo out; echo err >&2; false")
    assert (r.exit_code, r.stdout, r.stderr, r.ok) == (1, b"out\n", b"err\n", False)
    assert vm.exec(shell="nosuchcommand").exit_code == 127


def test_large_output_streams_intact(vm: MicroVM) -> None:
    data = os.urandom(10 * 1024 * 1024)
    vm.agent.write_file("/dev/shm/big", data)
    chunks: list[bytes] = []
    r = vm.exec(["sh", "-c", "cat /dev/shm/big; echo done >&2"], on_stdout=chunks.append)
    vm.exec(["rm", "/dev/shm/big"])
    assert (r.exit_code, r.stderr) == (0, b"done\n")
    assert len(chunks) > 10  # streamed in pieces as the guest produced them, not one final blob
    assert b"".join(chunks) == data


def test_signals_and_timeouts(vm: MicroVM) -> None:
    r = vm.exec(shell="kill -TERM $$; sleep 5")
    assert (r.exit_code, r.signal, r.timed_out) == (None, signal.SIGTERM, False)
    r = vm.exec(shell="echo started; sleep 30 & sleep 30", timeout=1.0)
    assert r.timed_out and r.signal == signal.SIGKILL and r.stdout == b"started\n"
    # The whole process group was killed, the background sleep included.
    assert vm.exec(shell="ps | grep -c '[s]leep 30'").stdout.strip() == b"0"
    # Cancellation from the host: signal a running command through its handle.
    r = vm.exec(shell="echo waiting; sleep 60", on_start=lambda running: running.signal(signal.SIGINT))
    assert r.signal == signal.SIGINT and not r.timed_out


def test_eight_concurrent_execs(vm: MicroVM) -> None:
    vm.exec(["sh", "-c", "rm -rf /tmp/conc; mkdir /tmp/conc"])
    # Each command waits until all eight have started: they can only all finish if they ran at once.
    script = "touch /tmp/conc/$N; i=0; while [ $(ls /tmp/conc | wc -l) -lt 8 ]; do sleep 0.1; i=$((i+1)); " \
             "[ $i -gt 600 ] && exit 9; done; echo done $N"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: vm.exec(shell=script, env={"N": str(n)}, timeout=120), range(8)))
    assert [r.stdout for r in results] == [f"done {n}\n".encode() for n in range(8)]
    assert len({r.pid for r in results}) == 8


def test_spawn_failures_are_errors_not_crashes(vm: MicroVM) -> None:
    with pytest.raises(AgentError, match="user nosuchuser not found"):
        vm.exec(["id"], user="nosuchuser")
    with pytest.raises(AgentError, match="group nogrp not found"):
        vm.exec(["id"], user="app:nogrp")
    with pytest.raises(AgentError, match="chdir /nonexistent"):
        vm.exec(["pwd"], cwd="/nonexistent")
    with pytest.raises(AgentError, match="exec /bin/nope: No such file"):
        vm.exec(["/bin/nope"])
    assert vm.agent.ping().startswith("amber-agent")


def test_write_and_read_files_with_mode_and_owner(vm: MicroVM) -> None:
    payload = bytes(range(256)) * 9000  # 2.3 MB: several chunks
    vm.agent.write_file("/home/app/deep/dir/data.bin", payload, mode=0o640, owner="app:staff", make_parents=True)
    info = vm.agent.read_file("/home/app/deep/dir/data.bin")
    assert (info.data == payload, info.mode, info.uid, info.gid) == (True, 0o640, 1000, 50)
    stat = vm.exec(["stat", "-c", "%a %u %g %s", "/home/app/deep/dir/data.bin"]).stdout
    assert stat == f"640 1000 50 {len(payload)}\n".encode()
    vm.agent.write_file("/tmp/empty", b"", mode=0o600)
    assert vm.agent.read_file("/tmp/empty").data == b""
    with pytest.raises(AgentError, match="No such file"):
        vm.agent.read_file("/nonexistent")
    with pytest.raises(AgentError, match="absolute path"):
        vm.agent.write_file("relative", b"x")
    with pytest.raises(AgentError, match="not a regular file"):
        vm.agent.read_file("/tmp")


def wait_for_port(vm: MicroVM, port: int, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            vm.agent.tcp_probe(port, timeout=1.0)
            return
        except AgentError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_tcp_and_http_probes(vm: MicroVM) -> None:
    with pytest.raises(AgentError, match="Connection refused"):
        vm.agent.tcp_probe(8123)
    server = threading.Thread(target=lambda: vm.exec(["httpd", "-f", "-p", "8123", "-h", "/www"]), daemon=True)
    server.start()
    try:
        wait_for_port(vm, 8123)
        vm.agent.tcp_probe(8123)
        assert vm.agent.http_probe(8123, "/index.html") == 200
        assert vm.agent.http_probe(8123, "/missing") == 404
    finally:
        vm.exec(["killall", "httpd"])
        server.join(timeout=30)
    with pytest.raises(AgentError):
        vm.agent.http_probe(8124)


def test_sync_freeze_thaw(vm: MicroVM) -> None:
    from amber.vm import SyncMode

    vm.agent.sync()
    vm.agent.sync(SyncMode.FREEZE)
    try:
        with pytest.raises(AgentError, match="already frozen"):
            vm.agent.sync(SyncMode.FREEZE)
    finally:
        vm.agent.sync(SyncMode.THAW)
    assert vm.exec(["touch", "/tmp/after-thaw"]).exit_code == 0


def test_background_children_outlive_their_command_without_sigpipe(vm: MicroVM) -> None:
    vm.exec(["rm", "-f", "/tmp/alive"])
    r = vm.exec(shell="(sleep 0.3; echo late; echo late >&2; sleep 0.3; echo alive > /tmp/alive) & echo first")
    assert (r.exit_code, r.stdout) == (0, b"first\n")  # returned without waiting for the background child
    deadline = time.monotonic() + 30
    while vm.exec(["cat", "/tmp/alive"]).stdout != b"alive\n":  # it wrote to the closed exec and lived on
        assert time.monotonic() < deadline, "the background child died (SIGPIPE?)"
        time.sleep(0.1)


def test_probes_find_a_service_on_ipv6_loopback(vm: MicroVM) -> None:
    server = threading.Thread(target=lambda: vm.exec(["httpd", "-f", "-p", "[::1]:8125", "-h", "/www"]), daemon=True)
    server.start()
    try:
        wait_for_port(vm, 8125)  # 127.0.0.1 refuses, ::1 answers
        assert vm.agent.http_probe(8125, "/index.html") == 200
        with pytest.raises(AgentError, match="Connection refused"):
            vm.agent.tcp_probe(8125, host="127.0.0.1")
        vm.agent.tcp_probe(8125, host="::1")
    finally:
        vm.exec(["killall", "httpd"])
        server.join(timeout=30)


def test_orphans_are_reaped(vm: MicroVM) -> None:
    # Grandchildren whose parent exited are re-parented to the agent (PID 1), which must reap them.
    for _ in range(3):
        vm.exec(shell="(sh -c 'sleep 0.2' &) ; (true &)")
    r = vm.exec(shell="sleep 1; for s in /proc/[0-9]*/stat; do cut -d' ' -f3 $s; done | grep -c Z || true")
    assert r.stdout.strip() == b"0"


def test_malformed_frames_get_errors_and_pid_1_survives(vm: MicroVM) -> None:
    agent = vm.agent
    garbage = [
        b"\x00\xffnot a frame at all\x01\x02",
        HEADER.pack(b"AM", MsgType.EXEC, 0, 7, 0xFFFFFFF0),  # absurd length
        encode_frame(MsgType.EXEC, 8, b"\x01\xff\xff\xff\x7fab"),  # field longer than the frame
        encode_frame(MsgType.EXEC, 9, encode_field(1, b"a\x00b")),  # NUL inside a string
        encode_frame(MsgType.WRITE_FILE, 10, encode_field(11, b"\x01")),  # u32 field of 1 byte
        encode_frame(200, 11, b""),  # unknown type
        encode_frame(MsgType.STDIN, 12, b"data for nobody"),
    ]
    for g in garbage:
        agent._send(g)
    assert agent.ping().startswith("amber-agent")
    assert vm.exec(["true"]).exit_code == 0
