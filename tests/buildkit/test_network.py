"""Dockerfile ``RUN`` network isolation (issue 11): with internet a step reaches the outside world only, never
the host (any of its addresses, the bridge's gateway included) nor another build's container; without
internet it has nothing but loopback. Base images still come from the loopback registry.

The outside world is a network namespace the test creates (``tests.support.network``); the host is a
listener on every host address; both count what reached them.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from amber.buildkit.daemon import ManagedDockerd
from amber.isolation import ensure_bridge
from tests.buildkit.conftest import Images
from tests.buildkit.test_build import Run, build
from tests.support.network import HostListener, OutsideWorld, host_addresses


def _probe_script(targets: list[str], port: int) -> str:
    """Shell that tries a TCP connection to each target and records what happened, one line each."""
    loop = " ".join(targets)
    return (f"for t in {loop}; do r=$(timeout 5 nc $t {port} </dev/null 2>&1); "
            f'echo "$t status=$? $r"; done > /probes')  # fmt: skip


def host_targets() -> list[str]:
    """Every IPv4 address of the host but loopback (a container's 127.0.0.1 is its own)."""
    return [a for a in host_addresses() if ipaddress.ip_address(a).version == 4 and not a.startswith("127.")]


def test_run_with_internet_reaches_the_outside_world_and_never_the_host(
    dockerd: ManagedDockerd, images: Images, tmp_path: Path, outside: OutsideWorld, host_listener: HostListener
) -> None:
    gateway = str(ensure_bridge(dockerd.layout.bridge).gateway.ip)
    targets = host_targets()
    assert gateway in targets and outside.host_side in targets
    dockerfile = (
        f"FROM {images.public}\n"
        f"RUN (timeout 5 wget -qO- http://{outside.address}:{outside.port}/; echo status=$?) > /outside 2>&1\n"
        f"RUN {_probe_script(targets, host_listener.port)}\n"
        "RUN ip route > /routes\n"
    )
    run = build(dockerd, tmp_path / "on", dockerfile, internet_access=True, skip_cache=True)
    assert (run.tree / "outside").read_text() == "outside-world\nstatus=0\n"
    probes = (run.tree / "probes").read_text().splitlines()
    assert [line.split()[0] for line in probes] == targets
    for line in probes:
        assert "status=0" not in line and "host-listener" not in line, line
        assert "refused" in line, line  # rejected at once by the host rules, not timed out
    assert f"default via {gateway}" in (run.tree / "routes").read_text()
    assert host_listener.connections == []
    assert [e.split()[0] for e in outside.events()] == ["tcp"]


def test_run_without_internet_sends_no_packet(
    dockerd: ManagedDockerd, images: Images, tmp_path: Path, outside: OutsideWorld, host_listener: HostListener
) -> None:
    dockerfile = (
        f"FROM {images.public}\n"
        "RUN cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' > /ifaces\n"
        f"RUN (timeout 5 wget -qO- http://{outside.address}:{outside.port}/; echo status=$?) > /outside 2>&1\n"
        f"RUN {_probe_script(host_targets(), host_listener.port)}\n"
    )
    run = build(dockerd, tmp_path / "off", dockerfile, internet_access=False, skip_cache=True)
    assert (run.tree / "ifaces").read_text().split() == ["lo"]
    assert "status=0" not in (run.tree / "outside").read_text()
    assert all("status=0" not in line for line in (run.tree / "probes").read_text().splitlines())
    assert outside.events() == [] and host_listener.connections == []


def test_build_containers_cannot_reach_each_other(dockerd: ManagedDockerd, images: Images, tmp_path: Path) -> None:
    """Build A listens on a port in its RUN; build B, on the same bridge at the same time, tries every
    address of the bridge's /24 on that port. Nothing arrives at A."""
    subnet = ensure_bridge(dockerd.layout.bridge).gateway.network
    peers = " ".join(str(host) for host in list(subnet.hosts())[1:12])
    listener = (f"FROM {images.public}\n"
                "RUN ip -4 addr show eth0 | grep -o 'inet [0-9.]*' > /me; "
                "(timeout 25 nc -l -p 9999 > /got 2>/dev/null; true)\n")  # fmt: skip
    prober = (f"FROM {images.public}\n"
              "RUN sleep 8; for p in " + peers + "; do echo hello | timeout 2 nc $p 9999 2>/dev/null "
              "&& echo reached $p; done > /reached; true\n")  # fmt: skip

    async def both() -> tuple[Run, Run]:
        first = asyncio.to_thread(build, dockerd, tmp_path / "a", listener, internet_access=True, skip_cache=True)
        second = asyncio.to_thread(build, dockerd, tmp_path / "b", prober, internet_access=True, skip_cache=True)
        a, b = await asyncio.gather(first, second)
        return a, b

    a, b = asyncio.run(both())
    me = (a.tree / "me").read_text().split()[-1]
    assert ipaddress.ip_address(me) in subnet  # A was on the bridge, inside the addresses B tried
    assert me in peers.split()
    assert (a.tree / "got").read_text() == ""
    assert (b.tree / "reached").read_text() == ""


def test_add_url_is_fetched_inside_the_isolated_network(
    dockerd: ManagedDockerd, images: Images, tmp_path: Path, outside: OutsideWorld, host_listener: HostListener
) -> None:
    url = f"http://{outside.address}:{outside.port}/files/greeting.txt"
    dockerfile = (
        f"FROM {images.public}\n"
        f"ARG FROM_OUTSIDE={url}\n"
        "ADD $FROM_OUTSIDE /downloaded/\n"
        f"ADD {url}?again=1 /renamed.txt\n"
        "RUN stat -c '%a %Y' /downloaded/greeting.txt > /stat\n"
    )
    run = build(dockerd, tmp_path / "ok", dockerfile, internet_access=True, skip_cache=True)
    assert (run.tree / "downloaded" / "greeting.txt").read_text() == "outside-world\n"
    assert (run.tree / "renamed.txt").read_text() == "outside-world\n"
    assert (run.tree / "stat").read_text() == "600 1640995200\n"  # ADD's mode; mtime from Last-Modified
    assert [e.split()[0] for e in outside.events()] == ["tcp", "tcp"]
    steps = [e.message for e in run.events if e.message.startswith("[")]
    assert any("ADD $FROM_OUTSIDE /downloaded/" in m for m in steps), steps  # the Dockerfile's words, not ours
    assert not any("ADD" in m and "127.0.0.1" in m for m in run.messages())  # our loopback server stays hidden
    # The host, through any of its addresses or its loopback: refused in the fetch, the line named.
    for target in ["127.0.0.1", *host_targets()]:
        leak = build(dockerd, tmp_path / "leak", f"FROM {images.public}\nRUN true\n"
                     f"ADD http://{target}:{host_listener.port}/v2/_catalog /leak\n",
                     internet_access=True, skip_cache=True)  # fmt: skip
        assert leak.error is not None and "Dockerfile line 3" in str(leak.error), (target, leak.error)
    assert host_listener.connections == []


def test_add_url_without_internet_is_refused_before_anything_runs(
    dockerd: ManagedDockerd, images: Images, tmp_path: Path, outside: OutsideWorld
) -> None:
    dockerfile = f"FROM {images.public}\nRUN true\nADD http://{outside.address}:{outside.port}/x /x\n"
    run = build(dockerd, tmp_path / "off", dockerfile, internet_access=False, skip_cache=True)
    assert run.error is not None and "line 3: ADD downloads" in str(run.error)
    assert "internet_access is false" in str(run.error)
    assert not any(e.message.startswith("[") for e in run.events)  # no BuildKit step started
    assert outside.events() == []
