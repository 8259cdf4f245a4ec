"""Issue 11 end to end, on a real ``amber serve`` with one build worker (QEMU builds, dockerd's BuildKit, a
loopback registry):

- from a native ``run`` step, a Dockerfile ``RUN`` and an ``ADD``, neither a listener on every host address nor
  the Amber API itself is reachable; with ``internet_access: false`` no packet leaves (an outside-world
  namespace hears nothing) and ``ADD <url>`` is refused at accept with its line;
- a ``build_envs`` value and a build secret value leave no trace: 0 occurrences in the artifact's
  ``memory.bin``, its disk images and the database;
- the data directory is 0700 and the files Amber writes there 0600 (read-only ones 0400).
"""

from __future__ import annotations

import json
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.contract.conftest import Sdk, unique
from tests.support.network import HostListener, OutsideWorld, host_addresses

pytestmark = [pytest.mark.vm, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True, scope="module")]


def client(sdk: Sdk) -> httpx.Client:
    return sdk.server.client(sdk.acme_key, timeout=120)


def build(sdk: Sdk, body: dict[str, Any], limit: float = 600.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run a build to its end: (its final status snapshot, every log entry)."""
    with client(sdk) as api:
        accepted = api.post("/v1/templates/builds", json={"name": unique("iso"), **body})
        assert accepted.status_code == 202, accepted.text
        build_id = accepted.json()["build_id"]
        deadline = time.monotonic() + limit
        while (snapshot := api.get(f"/v1/templates/builds/{build_id}").json())["build"]["status"] in (
                "waiting", "building"):
            assert time.monotonic() < deadline, "build did not end (liveness bound)"
            time.sleep(0.5)
        logs = api.get(f"/v1/templates/builds/{build_id}/logs")
    entries = [json.loads(line[6:]) for line in logs.text.splitlines() if line.startswith("data: ")]
    return snapshot, entries


def host_targets() -> list[str]:
    return [a for a in host_addresses() if ":" not in a and not a.startswith("127.")]


def probes(port: int, targets: list[str]) -> str:
    """Shell trying each target's ``port`` over TCP; prints one ``probe <target> <outcome>`` line each."""
    return " ".join(f"(timeout 5 nc {t} {port} </dev/null >/dev/null 2>&1 && echo probe {t} reached "
                    f"|| echo probe {t} refused);" for t in targets)  # fmt: skip


def probe_lines(entries: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in entries if str(e.get("message", "")).startswith("probe ")]


def test_build_steps_reach_neither_the_host_nor_the_amber_api(
    sdk: Sdk, outside: OutsideWorld, host_listener: HostListener
) -> None:
    api_port = int(sdk.server.url.rsplit(":", 1)[1])
    targets = ["10.0.2.2", *host_targets()]
    # A native run step: the host listener, the Amber API (through slirp's host alias and every address).
    native, entries = build(sdk, {"base_image": sdk.base_image, "steps": [
        {"action": "run", "command": probes(host_listener.port, targets) + probes(api_port, targets)},
        {"action": "run", "command": f"nc {outside.address} {outside.port} </dev/null | sed 's/^/probe outside /'"},
    ]})  # fmt: skip
    assert native["build"]["status"] == "ready", native
    lines = probe_lines(entries)
    assert len(lines) == 2 * len(targets) + 1 and all(line.endswith("refused") for line in lines[:-1]), lines
    assert lines[-1] == "probe outside outside-world"  # the outside world is reachable: this is isolation
    # A Dockerfile RUN on the BuildKit bridge, and an ADD of the Amber API's own URL. (A first build starts
    # dockerd, whose bridge's gateway is one more host address.)
    first, _ = build(sdk, {"dockerfile": f"FROM {sdk.base_image}\nRUN true\n"})
    assert first["build"]["status"] == "ready", first
    gateway_targets = host_targets()
    assert any(t.startswith("10.213.") for t in gateway_targets), gateway_targets
    dockerfile = (f"FROM {sdk.base_image}\n"
                  f"RUN {probes(host_listener.port, gateway_targets)} {probes(api_port, gateway_targets)}\n")
    run_step, entries = build(sdk, {"dockerfile": dockerfile})
    assert run_step["build"]["status"] == "ready", run_step
    lines = probe_lines(entries)
    assert len(lines) == 2 * len(gateway_targets) and all(line.endswith("refused") for line in lines), lines
    for target in ["127.0.0.1", *gateway_targets]:
        add, _ = build(sdk, {"dockerfile": f"FROM {sdk.base_image}\n"
                                           f"ADD http://{target}:{api_port}/v1/templates /api.json\n"})
        assert add["build"]["status"] == "error", add
        assert "Dockerfile line 2" in json.dumps(add), add
    assert host_listener.connections == []


def test_without_internet_no_packet_leaves_and_add_url_is_refused_at_accept(
    sdk: Sdk, outside: OutsideWorld, host_listener: HostListener
) -> None:
    targets = [outside.address, "10.0.2.2", *host_targets()]
    offline, entries = build(sdk, {"base_image": sdk.base_image, "build_config": {"internet_access": False},
                                   "steps": [{"action": "run", "command": probes(outside.port, targets[:1])
                                              + probes(host_listener.port, targets)}]})  # fmt: skip
    assert offline["build"]["status"] == "ready", offline
    assert all(line.endswith("refused") for line in probe_lines(entries))
    dockerfile = f"FROM {sdk.base_image}\nRUN {probes(outside.port, [outside.address])}\n"
    df, entries = build(sdk, {"dockerfile": dockerfile, "build_config": {"internet_access": False}})
    assert df["build"]["status"] == "ready" and probe_lines(entries) == [f"probe {outside.address} refused"]
    with client(sdk) as api:
        add = api.post("/v1/templates/builds", json={
            "name": unique("add"), "build_config": {"internet_access": False},
            "dockerfile": f"FROM {sdk.base_image}\nRUN true\nADD http://{outside.address}:{outside.port}/f /f\n"})
    assert add.status_code == 400 and add.json()["code"] == "invalid_request", add.text
    assert "line 3: ADD downloads" in add.json()["error"]
    assert outside.wait_events(1, timeout=1.0) == [] and host_listener.connections == []


def occurrences(paths: list[Path], needles: list[bytes]) -> dict[str, int]:
    """How often each needle appears in the files (read in overlapping chunks: memory files are large)."""
    counts = {n.decode(): 0 for n in needles}
    for path in paths:
        with path.open("rb") as handle:
            tail = b""
            while chunk := handle.read(8 << 20):
                data = tail + chunk
                for needle in needles:
                    counts[needle.decode()] += data.count(needle)
                tail = data[-64:]
                for needle in needles:  # a needle inside the carried tail was counted already
                    counts[needle.decode()] -= tail.count(needle)
    return counts


def test_build_only_values_leave_no_trace_in_memory_disk_or_database(sdk: Sdk) -> None:
    token = uuid.uuid4().hex[:12]
    env_value, secret_value, df_env_value = f"nativeneedle{token}", f"secretneedle{token}", f"dockerneedle{token}"
    # The step keeps the value in a shell variable, a child process's environment and a pipe, then exits.
    native, _ = build(sdk, {"base_image": sdk.base_image, "build_envs": {"MYENV": env_value}, "steps": [
        {"action": "run", "command": 'v="$MYENV"; x="$v$v$v"; sh -c \'test -n "$MYENV"\' && '
                                     'echo "$x" | wc -c >/dev/null'}],
        "start_cmd": "sleep 100000"})  # fmt: skip
    assert native["build"]["status"] == "ready", native
    dockerfile = (f"FROM {sdk.base_image}\n"
                  "RUN --mount=type=secret,id=tok test -s /run/secrets/tok && test -n \"$MYENV\"\n")
    with_secret, _ = build(sdk, {"dockerfile": dockerfile, "build_envs": {"MYENV": df_env_value},
                                 "build_secrets": [{"id": "tok", "value": secret_value}]})
    assert with_secret["build"]["status"] == "ready", with_secret
    data_dir = sdk.server.data_dir
    memory = sorted(data_dir.rglob("memory.bin"))
    disks = sorted(p for p in data_dir.glob("artifacts/**/disk/*") if p.is_file())
    database_file = Path(str(sdk.server.database_url).removeprefix("sqlite:///"))
    database = sorted(database_file.parent.glob(database_file.name + "*"))
    assert memory and disks and database, (memory, disks, database)
    found = occurrences([*memory, *disks, *database],
                        [env_value.encode(), secret_value.encode(), df_env_value.encode()])
    assert found == {env_value: 0, secret_value: 0, df_env_value: 0}, found


def test_the_data_directory_is_private(sdk: Sdk) -> None:
    data_dir = sdk.server.data_dir
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    database = Path(str(sdk.server.database_url).removeprefix("sqlite:///"))
    ours = [database, *database.parent.glob(database.name + "-*"), *data_dir.glob("blobs/**/*"),
            *data_dir.glob("artifacts/**/*"), *data_dir.glob("cache/**/*.ext4"), *data_dir.glob("cache/**/*.qcow2")]
    loose = [f"{p} {stat.S_IMODE(p.stat().st_mode):o}" for p in ours
             if p.is_file() and not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == []
