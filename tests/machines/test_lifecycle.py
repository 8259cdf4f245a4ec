"""Machine lifecycle and commands through the unmodified SDK: create → exec → processes → time → kill."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
from nullspace import Machine, MachineQuery
from nullspace.errors import ConflictError, MachineError, NotFoundError

from tests.machines.conftest import Machines, details, info_of, listed, run, start

pytestmark = pytest.mark.vm


def test_create_exec_and_kill(machines: Machines) -> None:
    machine = Machine.create(template=machines.template, envs={"MACHINE_ENV": "from-create"}, **machines.acme)
    try:
        info = details(machine)
        assert info.status.value == "running"
        assert (info.config.vcpus, info.config.memory_mb) == (2, 512)
        assert info.template == machines.template

        shell = run(machine, "echo hello $((6*7)) | tr a-z A-Z", shell=True)
        assert (shell.exit_code, shell.stdout, shell.stderr) == (0, "HELLO 42\n", "")
        argv = run(machine, "echo", ["a b", "$HOME"])
        assert argv.stdout == "a b $HOME\n"
        failing = run(machine, "sh", ["-c", "echo oops >&2; exit 3"])
        assert (failing.exit_code, failing.stderr) == (3, "oops\n")
        missing = run(machine, "no-such-command")
        assert missing.exit_code == 127 and "not found" in missing.stderr

        env = run(machine, "env", envs={"EXEC_ENV": "from-exec", "MACHINE_ENV": "overridden"}).stdout
        assert "TEMPLATE_ENV=from-template" in env and "EXEC_ENV=from-exec" in env
        assert "MACHINE_ENV=overridden" in env
        assert "MACHINE_ENV=from-create" in run(machine, "env").stdout
        start_env = run(machine, "cat", ["/tmp/start-env"]).stdout
        assert "TEMPLATE_ENV=from-template" in start_env and "MACHINE_ENV" not in start_env

        assert run(machine, "pwd").stdout == "/workspace\n"
        assert run(machine, "pwd", cwd="/tmp").stdout == "/tmp\n"
        assert run(machine, "cat", ["/data/marker"]).stdout == "built\n"
        with pytest.raises(MachineError) as bad_cwd:
            run(machine, "pwd", cwd="/no/such/dir")
        assert bad_cwd.value.code == "invalid_request" and "cwd" in str(bad_cwd.value)
        assert machine.is_running()
    finally:
        machine.kill()
    after = info_of(machine.id, machines.acme)
    assert after.status.value == "destroyed"
    with pytest.raises(ConflictError):
        run(Machine.connect(machine.id, **machines.acme), "true")


def test_sync_exec_timeout_kills_the_command(machines: Machines) -> None:
    with Machine.create(template=machines.template, **machines.acme) as machine:
        started = time.monotonic()
        with pytest.raises(MachineError) as timed_out:
            run(machine, "sleep 30; echo never", shell=True, timeout=2)
        assert timed_out.value.code == "exec_timeout"
        assert time.monotonic() - started < 20
        assert "sleep 30" not in run(machine, "ps", ["-o", "args"]).stdout


def test_background_processes_logs_stdin_and_kill(machines: Machines) -> None:
    with Machine.create(template=machines.template, **machines.acme) as machine:
        job = start(machine, "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo done >&2; exit 4",
                                   shell=True)
        result = job.wait(timeout=60)
        assert (result.exit_code, result.stdout, result.stderr) == (4, "line1\nline2\nline3\n", "done\n")
        logs = machine.commands.get_logs(job.pid)
        assert logs.exit_code == 4 and logs.stdout == "line1\nline2\nline3\n"
        assert "line1\n" in logs.output and "done\n" in logs.output

        reader = start(machine, "cat")
        machine.commands.send_stdin(reader.pid, "via stdin\n")
        deadline = time.monotonic() + 30
        while "via stdin" not in machine.commands.get_logs(reader.pid).stdout:
            assert time.monotonic() < deadline, "stdin never reached the process"
            time.sleep(0.1)
        server = start(machine, "sleep 600", shell=True)
        listed = {p.pid: p for p in machine.commands.list()}
        assert listed[server.pid].running and listed[job.pid].running is False
        server.kill()
        reader.kill()
        killed = server.wait(timeout=30)
        assert killed.exit_code != 0
        assert not any(p.running for p in machine.commands.list() if p.pid in (server.pid, reader.pid))


def test_streamed_output_callbacks(machines: Machines) -> None:
    with Machine.create(template=machines.template, **machines.acme) as machine:
        seen: list[str] = []
        result = run(machine, "for i in 1 2 3; do echo tick$i; sleep 0.1; done", shell=True,
                                      on_stdout=seen.append)
        assert result.exit_code == 0 and "".join(seen) == "tick1\ntick2\ntick3\n"

        live: list[str] = []
        done = threading.Event()

        def on_live(text: str) -> None:
            live.append(text)
            if "second" in "".join(live):
                done.set()

        job = start(machine, "echo first; sleep 0.5; echo second; exit 2", shell=True,
                                   on_stdout=on_live)
        final = job.wait(timeout=60)
        assert done.wait(10)
        assert final.exit_code == 2 and final.stdout == "first\nsecond\n"
        assert "".join(live) == "first\nsecond\n"
        # The process outlives its socket: a second connection follows it.
        sleeper = start(machine, "sleep 1; echo late", shell=True,
                                       on_stdout=lambda s: None)
        sleeper.disconnect()
        again = machine.commands.connect(sleeper.pid)
        assert again.wait(timeout=60).stdout == "late\n"


def test_set_timeout_and_the_reaper(machines: Machines) -> None:
    short = Machine.create(template=machines.template, timeout=3, **machines.acme)
    kept = Machine.create(template=machines.template, timeout=3, **machines.acme)
    lease = kept.set_timeout(120)
    assert lease.timeout_ms == 120_000
    deadline = time.monotonic() + 30
    while details(short).status.value != "destroyed":
        assert time.monotonic() < deadline, "the timed-out machine was not destroyed"
        time.sleep(0.25)
    info = details(kept)
    assert info.status.value == "running" and info.remaining_ms is not None and info.remaining_ms > 60_000
    kept.kill()


def test_inactivity_timeout_hibernates(machines: Machines) -> None:
    machine = Machine.create(template=machines.template, timeout=600, inactivity_timeout_ms=3000,
                             timeout_action="hibernate", **machines.acme)
    try:
        machine.files.write("/workspace/kept.txt", "still here")
        deadline = time.monotonic() + 60
        while details(machine).status.value != "paused":
            assert time.monotonic() < deadline, "the idle machine was not hibernated"
            time.sleep(0.25)
        again = Machine.connect(machine.id, **machines.acme)
        assert again.files.read("/workspace/kept.txt") == "still here"
    finally:
        machine.kill()


def test_hibernate_and_connect_keep_processes_and_files(machines: Machines) -> None:
    machine = Machine.create(template=machines.template, **machines.acme)
    try:
        machine.files.write("/workspace/state.txt", "before hibernate")
        counter = start(machine, "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done", shell=True)
        time.sleep(1)
        snapshot = machine.hibernate()
        assert snapshot.machine_id == machine.id and snapshot.size_bytes > 0
        info = info_of(machine.id, machines.acme)
        assert info.status.value == "paused" and info.snapshot_id == snapshot.id
        with pytest.raises(ConflictError):
            run(machine, "true")

        resumed = Machine.connect(machine.id, **machines.acme)
        assert details(resumed).status.value == "running"
        assert resumed.files.read("/workspace/state.txt") == "before hibernate"
        before = resumed.commands.get_logs(counter.pid).stdout.split()
        time.sleep(1.5)
        after = resumed.commands.get_logs(counter.pid).stdout.split()
        assert len(after) > len(before) > 0
        assert [int(x) for x in after] == list(range(1, len(after) + 1)), "the counter lost or repeated values"
        assert any(p.pid == counter.pid and p.running for p in resumed.commands.list())
        # Hibernate twice: the second resume still works.
        resumed.hibernate()
        third = Machine.connect(machine.id, **machines.acme)
        assert run(third, "cat", ["/workspace/state.txt"]).stdout == "before hibernate"
    finally:
        Machine.kill_by_id(machine.id, **machines.acme)


def test_list_filters_by_state_and_metadata(machines: Machines) -> None:
    one = Machine.create(template=machines.template, metadata={"team": "a", "n": 1}, **machines.acme)
    two = Machine.create(template=machines.template, metadata={"team": "b"}, **machines.acme)
    try:
        two.hibernate()
        ids = listed(machines.acme)
        assert {one.id, two.id} <= ids
        running = listed(machines.acme, state="running")
        assert one.id in running and two.id not in running
        team_a = listed(machines.acme, query=MachineQuery(metadata={"team": "a"}))
        assert one.id in team_a and two.id not in team_a
        assert not listed(machines.other) & {one.id, two.id}
    finally:
        one.kill()
        Machine.kill_by_id(two.id, **machines.acme)


def test_create_is_idempotent_per_key(machines: Machines) -> None:
    headers = {"Authorization": f"Bearer {machines.acme_key}", "Idempotency-Key": "same-key-1"}
    body = {"template": machines.template, "vcpus": 2, "memory_mb": 512, "envs": {"SECRET_ENV": "s3cret-value"}}
    with httpx.Client(base_url=machines.server.url, timeout=120) as http:
        first = http.post("/v1/machines", json=body, headers=headers)
        second = http.post("/v1/machines", json=body, headers=headers)
        assert first.status_code == second.status_code == 201
        assert first.json()["id"] == second.json()["id"]
        other = http.post("/v1/machines", json={**body, "memory_mb": 1024}, headers=headers)
        assert other.status_code == 400 and other.json()["code"] == "invalid_request"
        assert "s3cret-value" not in first.text + second.text + other.text
        http.delete(f"/v1/machines/{first.json()['id']}", headers=headers)


def test_bad_requests_are_refused_clearly(machines: Machines) -> None:
    headers = {"Authorization": f"Bearer {machines.acme_key}"}
    with httpx.Client(base_url=machines.server.url, timeout=60, headers=headers) as http:
        for body, field in [({"template": "no-such-template"}, None), ({"template": machines.template, "vcpus": 0},
                                                                        "vcpus"),
                            ({"template": machines.template, "disk_mb": 10**7}, "disk_mb"),
                            ({"template": machines.template, "timeout_ms": "soon"}, "timeout_ms"),
                            ({"template": machines.template, "cwd": "relative/dir"}, "cwd"),
                            ({"template": machines.template, "cwd": "/workspace/.nullspace/x"}, "cwd"),
                            ({"template": machines.template, "envs": {"1BAD": "x"}}, "envs")]:
            answer = http.post("/v1/machines", json=body)
            if field is None:
                assert answer.status_code == 404 and answer.json()["code"] == "template_not_found"
            else:
                assert answer.status_code == 400, (body, answer.text)
                assert answer.json()["code"] == "invalid_request" and field in answer.json()["error"]
        assert http.post("/v1/machines", content=b"{not json").status_code == 400
        assert http.get("/v1/machines/mch_nope").json()["code"] == "machine_not_found"
    with pytest.raises(NotFoundError):
        Machine.create(template="missing-template", **machines.acme)


def test_a_shape_other_than_the_templates_runs_at_that_shape(machines: Machines) -> None:
    from nullspace import Template, wait_for_port

    small = Template.from_template(machines.template.split(":")[0]).set_start_cmd(
        "httpd -f -p 8081 -h /tmp", wait_for_port(8081))
    name = machines.template.split(":")[0] + "-1cpu"
    Template.build(small, f"{name}:stable", cpu_count=1, memory_mb=512, **machines.acme)
    with Machine.create(template=f"{name}:stable", vcpus=2, memory_mb=1024, **machines.acme) as machine:
        info = details(machine)
        assert (info.config.vcpus, info.config.memory_mb) == (2, 1024)
        assert run(machine, "nproc").stdout.strip() == "2"
        mem_kib = int(run(machine, "sh -c 'grep MemTotal /proc/meminfo'", shell=True).stdout.split()[1])
        assert 900_000 < mem_kib <= 1024 * 1024, mem_kib
        assert run(machine, "sh -c 'echo > /dev/tcp/127.0.0.1/8081' 2>&1; "
                                    "wget -qO- http://127.0.0.1:8081/ >/dev/null; echo $?", shell=True).exit_code == 0
    with Machine.create(template=f"{name}:stable", vcpus=1, memory_mb=512, **machines.acme) as same:
        assert run(same, "nproc").stdout.strip() == "1"


def test_env_values_never_reach_a_record_a_log_or_an_answer(machines: Machines) -> None:
    secret = "s3cret-" + uuid.uuid4().hex
    machine = Machine.create(template=machines.template, envs={"API_TOKEN": secret}, **machines.acme)
    try:
        assert f"API_TOKEN={secret}" in run(machine, "env").stdout  # the guest has it
        answers = [httpx.get(f"{machines.server.url}/v1/machines/{machine.id}",
                             headers={"Authorization": f"Bearer {machines.acme_key}"}).text,
                   httpx.get(f"{machines.server.url}/v1/machines",
                             headers={"Authorization": f"Bearer {machines.acme_key}"}).text]
        machine.hibernate()
        resumed = Machine.connect(machine.id, **machines.acme)
        assert f"API_TOKEN={secret}" in run(resumed, "env").stdout  # kept in the guest's memory image
    finally:
        Machine.kill_by_id(machine.id, **machines.acme)
    for text in answers:
        assert secret not in text
    assert secret not in (machines.server.data_dir / "server.log").read_text(errors="replace")
    for stored in machines.server.data_dir.glob("amber.db*"):  # the database and its write-ahead log
        assert secret.encode() not in stored.read_bytes(), stored
