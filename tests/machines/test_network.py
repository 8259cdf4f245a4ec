"""From inside a machine: the Amber API, a listener on the host's loopback and addresses, and other machines
are unreachable; the outside world is reachable with internet and nothing at all without it."""

from __future__ import annotations

import pytest
from nullspace import Machine

from tests.machines.conftest import Machines, run
from tests.support.network import HostListener, OutsideWorld, host_addresses

pytestmark = pytest.mark.vm


def tcp(machine: Machine, address: str, port: int) -> str:
    """What the guest's ``nc`` printed connecting to ``address:port``, and its status."""
    said = run(machine, f"timeout 5 nc {address} {port} </dev/null 2>&1; echo status=$?", shell=True).stdout
    return said.strip()


def targets() -> list[str]:
    return ["10.0.2.2", *(a for a in host_addresses() if a not in ("127.0.0.1", "::1"))]


def test_a_machine_reaches_neither_the_host_nor_amber_nor_other_machines(
    machines: Machines, host_listener: HostListener, outside: OutsideWorld
) -> None:
    api_port = machines.server.port
    with Machine.create(template=machines.template, **machines.acme) as machine, \
            Machine.create(template=machines.template, **machines.acme) as neighbour:
        run(neighbour, "mkdir -p /tmp/n && echo neighbour > /tmp/n/index.html && httpd -p 9090 -h /tmp/n", shell=True)
        assert "outside-world" in tcp(machine, outside.address, outside.port)  # the positive control
        for address in targets():
            for port in (api_port, host_listener.port, 9090):
                said = tcp(machine, address, port)
                assert "status=0" not in said and "neighbour" not in said, (address, port, said)
        assert host_listener.connections == []
        # The neighbour's own port answers inside the neighbour only.
        assert run(neighbour, "wget -qO- http://127.0.0.1:9090/", shell=True).stdout == "neighbour\n"


def test_without_internet_access_no_packet_leaves(machines: Machines, host_listener: HostListener,
                                                  outside: OutsideWorld) -> None:
    with Machine.create(template=machines.template, internet_access=False, **machines.acme) as machine:
        said = tcp(machine, outside.address, outside.port)
        assert "outside-world" not in said and "status=0" not in said, said
        for address in targets():
            assert "status=0" not in tcp(machine, address, host_listener.port)
        assert "status=0" in tcp(machine, "127.0.0.1", 8080), "the machine's own service still answers"
    assert outside.wait_events(1, timeout=1.0) == []
    assert host_listener.connections == []
