"""Long-lived commands through the agent: the base environment, stdin streaming, flow control, relays to
guest ports, the asyncio adapter, many background jobs, and what the agent leaves in guest memory."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from amber.vm import AgentError, Job, MicroVM
from amber.vm.agent import STDIN_WINDOW
from amber.vm.aio import AsyncJob, Stream
from tests.vm.test_exec import wait_for_port


def until(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Collector:
    """Output callbacks that remember the threads they ran in."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.threads: set[str] = set()

    def stdout(self, data: bytes) -> None:
        self.threads.add(threading.current_thread().name)
        self.out += data

    def stderr(self, data: bytes) -> None:
        self.threads.add(threading.current_thread().name)
        self.err += data


def test_base_environment_sits_between_defaults_and_the_exec_env(vm: MicroVM) -> None:
    script = 'echo "$A|$B|$TERM|$HOME"'
    try:
        vm.agent.set_env({"A": "base-a", "B": "base-b", "TERM": "dumb"})
        assert vm.exec(shell=script, env={"B": "exec-b"}).stdout == b"base-a|exec-b|dumb|/root\n"
        assert vm.exec(shell=script, user="app").stdout == b"base-a|base-b|dumb|/home/app\n"
        vm.agent.set_env({"B": "replaced"})  # replaces, not merges
        assert vm.exec(shell=script).stdout == b"|replaced|xterm|/root\n"
        with pytest.raises(ValueError, match="invalid variable name"):
            vm.agent.set_env({"X=Y": "1"})
    finally:
        vm.agent.set_env({})
    assert vm.exec(shell=script).stdout == b"||xterm|/root\n"


def test_set_env_clears(vm: MicroVM) -> None:
    vm.agent.set_env({"ONLY": "1"})
    vm.agent.set_env({})
    assert vm.exec(shell='echo "[$ONLY]"').stdout == b"[]\n"


def test_a_long_lived_command_with_open_stdin_and_reader_thread_callbacks(vm: MicroVM) -> None:
    got = Collector()
    exits: list[Job] = []
    job = vm.agent.start(["cat"], stdin_open=True, on_stdout=got.stdout, on_stderr=got.stderr, on_exit=exits.append)
    pid = job.wait_started(30)
    assert pid > 1 and job.pid == pid and job.stdin_open
    for i in range(5):
        job.send_stdin(f"line {i}\n".encode())
        line = f"line {i}\n".encode()
        until(lambda: got.out.endswith(line), f"echo of line {i}")  # noqa: B023 - used before the next round
    assert not job.done
    job.close_stdin()
    result = job.wait(30)
    assert (result.exit_code, bytes(got.out)) == (0, b"".join(f"line {i}\n".encode() for i in range(5)))
    assert got.threads == {"amber-agent-reader"} and exits == [job]
    assert result.stdout == b""  # streamed to the callback, not collected
    with pytest.raises(ValueError, match="stdin is not open"):
        job.send_stdin(b"too late")


def test_jobs_collect_output_signal_and_report_spawn_failures(vm: MicroVM) -> None:
    job = vm.agent.start(shell="echo out; echo err >&2; exit 3")
    result = job.wait(30)
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    sleeper = vm.agent.start(shell="echo ready; exec sleep 60")
    sleeper.wait_started(30)
    sleeper.signal(signal.SIGTERM)
    assert sleeper.wait(30).signal == signal.SIGTERM
    missing = vm.agent.start(["/bin/nope"])
    with pytest.raises(AgentError, match="exec /bin/nope: No such file") as e:
        missing.wait_started(30)
    assert e.value.errno == errno.ENOENT and missing.done
    with pytest.raises(AgentError):
        missing.wait()
    # Initial stdin larger than a frame is streamed as the command reads it.
    data = bytes(range(256)) * 12_000
    r = vm.agent.start(["sha256sum"], stdin=data).wait(60)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_output_window_stalls_only_the_unread_command(vm: MicroVM) -> None:
    taken = bytearray()
    job = vm.agent.start(shell="head -c 6000000 /dev/zero", manual_ack=True, window=256 << 10,
                         on_stdout=taken.extend)
    job.wait_started(30)
    time.sleep(2.0)
    # Nothing acknowledged: the guest stopped reading after the window (plus one read of each pipe).
    assert 256 << 10 <= len(taken) <= (256 << 10) + (256 << 10) and not job.done
    assert vm.exec(["echo", "others still run"]).stdout == b"others still run\n"
    job.consumed(len(taken))
    seen = len(taken)
    while not job.done:  # acknowledging what arrives lets it finish
        job.consumed(len(taken) - seen)
        seen = len(taken)
        time.sleep(0.01)
    assert job.wait(30).exit_code == 0 and len(taken) == 6_000_000


def test_stdin_credit_bounds_what_the_guest_buffers(vm: MicroVM) -> None:
    job = vm.agent.start(shell="sleep 2; wc -c", stdin_open=True)
    job.wait_started(30)
    blob = b"x" * (8 << 20)
    taken = job.offer_stdin(blob)
    assert taken == STDIN_WINDOW and job.offer_stdin(blob) == 0  # nothing more until the command reads
    job.send_stdin(blob[taken:], timeout=120)  # flows as the command reads
    job.close_stdin()
    assert job.wait(60).stdout.strip() == str(8 << 20).encode()


def test_many_background_jobs_and_the_job_limit(vm: MicroVM) -> None:
    jobs = [vm.agent.start(["sleep", "600"]) for _ in range(250)]
    try:
        for j in jobs:
            j.wait_started(60)
        assert len({j.pid for j in jobs}) == 250
        extra = [vm.agent.start(["sleep", "600"]) for _ in range(6)]
        jobs += extra
        for j in extra:
            j.wait_started(60)
        over = vm.agent.start(["true"])
        with pytest.raises(AgentError, match=r"too many concurrent jobs \(256\)") as e:
            over.wait_started(30)
        assert e.value.errno == errno.EAGAIN
        assert vm.agent.ping().startswith("amber-agent")  # requests that need no job slot still work
    finally:
        for j in jobs:
            if j.started and not j.done:
                j.signal(signal.SIGKILL)
        for j in jobs:
            if j.started:
                assert j.wait(60).signal == signal.SIGKILL
    assert vm.exec(["true"]).exit_code == 0


@pytest.fixture(scope="module")
def httpd(vm: MicroVM) -> Iterator[int]:
    """busybox httpd on guest port 8130 serving /www, started as a background job."""
    job = vm.agent.start(["httpd", "-f", "-p", "8130", "-h", "/www"])
    job.wait_started(30)
    wait_for_port(vm, 8130)
    yield 8130
    job.signal(signal.SIGKILL)
    job.wait(30)


def http_get(vm: MicroVM, port: int, path: str = "/index.html") -> bytes:
    got = bytearray()
    relay = vm.agent.relay(port, on_stdout=got.extend)
    relay.wait_started(30)
    relay.send_stdin(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    relay.close_stdin()
    assert relay.wait(60).exit_code == 0
    return bytes(got)


def test_relay_reaches_a_guest_http_server(vm: MicroVM, httpd: int) -> None:
    page = http_get(vm, httpd)
    assert page.startswith(b"HTTP/1.") and b" 200 " in page.split(b"\r\n")[0]
    assert page.endswith(b"hello from the guest\n")
    assert b" 404 " in http_get(vm, httpd, "/missing").split(b"\r\n")[0]


def test_twenty_concurrent_relays(vm: MicroVM, httpd: int) -> None:
    with ThreadPoolExecutor(20) as pool:
        pages = list(pool.map(lambda _: http_get(vm, httpd), range(20)))
    assert all(p.endswith(b"hello from the guest\n") for p in pages)


def test_relay_half_close_and_connect_failure(vm: MicroVM) -> None:
    # The guest service answers only after reading to EOF: stdin EOF must become shutdown(SHUT_WR).
    vm.agent.write_file("/tmp/count.sh", b"#!/bin/sh\nexec wc -c\n", mode=0o755)
    server = vm.agent.start(["nc", "-l", "-p", "8131", "-e", "/tmp/count.sh"])  # one connection
    server.wait_started(30)
    got = bytearray()
    relay = None
    deadline = time.monotonic() + 30
    while relay is None:
        attempt = vm.agent.relay(8131, on_stdout=got.extend)
        try:
            attempt.wait_started(30)
            relay = attempt
        except AgentError:  # not listening yet
            assert time.monotonic() < deadline, "nc did not listen"
            time.sleep(0.05)
    relay.send_stdin(b"a" * 100_000)
    relay.close_stdin()
    assert relay.wait(60).exit_code == 0 and got.strip() == b"100000"
    server.wait(30)
    refused = vm.agent.relay(8139)
    with pytest.raises(AgentError, match="port 8139") as e:
        refused.wait_started(30)
    assert e.value.errno == errno.ECONNREFUSED


def test_asyncio_adapter_awaits_streams_and_relays(vm: MicroVM, httpd: int) -> None:
    async def scenario() -> None:
        job = await AsyncJob.start(vm.agent, shell="for i in 1 2 3; do echo out $i; echo err $i >&2; done; exit 4")
        chunks = [(o.stream, o.data) async for o in job.output()]
        result = await job.wait()
        assert result.exit_code == 4 and job.pid is not None
        out = b"".join(d for s, d in chunks if s == Stream.STDOUT)
        err = b"".join(d for s, d in chunks if s == Stream.STDERR)
        assert (out, err) == (b"out 1\nout 2\nout 3\n", b"err 1\nerr 2\nerr 3\n")

        collected = await AsyncJob.start(vm.agent, ["cat"], stdin=b"fed", collect=True)
        assert (await collected.wait()).stdout == b"fed"

        cat = await AsyncJob.start(vm.agent, ["cat"], stdin_open=True)

        async def feed() -> None:  # beyond the stdin window: waits for credit, without a thread
            await cat.send_stdin(b"y" * (5 << 20))
            cat.close_stdin()

        async def drain() -> int:  # cat's output must be read meanwhile, or its window stalls it
            return sum([len(o.data) async for o in cat.output()])

        _, total = await asyncio.gather(feed(), drain())
        assert total == 5 << 20 and (await cat.wait()).exit_code == 0

        async def fetch() -> bytes:
            relay = await AsyncJob.relay(vm.agent, httpd)
            await relay.send_stdin(b"GET /index.html HTTP/1.0\r\n\r\n")
            relay.close_stdin()
            body = b"".join([o.data async for o in relay.output()])
            assert (await relay.wait()).exit_code == 0
            return body

        pages = await asyncio.gather(*(fetch() for _ in range(20)))
        assert all(p.endswith(b"hello from the guest\n") for p in pages)

        with pytest.raises(AgentError, match="exec nosuchcmd"):
            await AsyncJob.start(vm.agent, ["nosuchcmd"])
        with pytest.raises(AgentError, match="port 8138"):
            await AsyncJob.relay(vm.agent, 8138)

    threads_before = threading.active_count()
    asyncio.run(scenario())
    assert threading.active_count() <= threads_before + 1  # no thread per command (+ asyncio's executor)


def test_agent_memory_keeps_no_replaced_env_values_or_exec_secrets(vm: MicroVM) -> None:
    # Values built from two halves, so the checking command itself never carries them whole.
    first, second = "amber-scrub-", "7f3c9d"
    token = first + second
    vm.agent.set_env({"BUILD_ONLY": token + "-base"})
    vm.agent.set_env({"KEPT": "visible-" + second})  # replaces (and scrubs) the first value
    r = vm.exec(["true"], env={"STEP_SECRET": token + "-exec"})
    assert r.exit_code == 0
    vm.agent.write_file("/tmp/secret-file", (token + "-file").encode() * 10)
    vm.exec(["rm", "/tmp/secret-file"])
    # Scan PID 1's writable mappings for each value (dd through /proc/1/mem, count matches).
    scan = (
        f'T={first}; T="$T{second}"; total=0; '
        "while read range perms rest; do case $perms in rw*) ;; *) continue;; esac; "
        "s=$((0x${range%-*})); e=$((0x${range#*-})); "
        'for suffix in -base -exec -file; do '
        "n=$(dd if=/proc/1/mem bs=4096 skip=$((s/4096)) count=$(((e-s)/4096)) 2>/dev/null | grep -c -F \"$T$suffix\"); "
        "total=$((total+n)); done; done < /proc/1/maps; echo $total; "
        f'K=visible-; K="$K{second}"; for range in $(grep rw /proc/1/maps | cut -d" " -f1); do '
        "s=$((0x${range%-*})); e=$((0x${range#*-})); "
        "dd if=/proc/1/mem bs=4096 skip=$((s/4096)) count=$(((e-s)/4096)) 2>/dev/null | grep -c -F \"$K\"; done"
    )
    try:
        out = vm.exec(shell=scan, timeout=120).stdout.decode().split()
    finally:
        vm.agent.set_env({})
    assert out[0] == "0", f"secret values found in the agent's memory: {out[0]} matches"
    assert sum(int(n) for n in out[1:]) >= 1  # the scan does find what the agent legitimately keeps
