"""Guest network isolation (issue 11): with internet a guest reaches the outside world only, never the host's
loopback, the host's addresses nor other guests; without internet no packet leaves it. Internet is chosen per
boot and per restore; the NIC is part of the machine.

The "outside world" is a network namespace the test creates (``tests.support.network.OutsideWorld``); the
host is a listener on every host address. Every attempt is a real TCP connection or UDP datagram from the
guest's busybox (``nc``, ``wget``, ``tftp``), and the listeners count what arrived.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amber.isolation import host_ruleset
from amber.settings import get_settings
from amber.vm import MicroVM, boot, restore
from tests.support.network import HostListener, OutsideWorld, host_addresses


def tcp(vm: MicroVM, address: str, port: int) -> str:
    """What the guest's ``nc`` printed connecting to ``address:port`` (empty lines dropped), and its status."""
    result = vm.exec(shell=f"timeout 5 nc {address} {port} </dev/null 2>&1; echo status=$?", timeout=30)
    return result.stdout.decode().strip()


def udp(vm: MicroVM, address: str, port: int) -> None:
    """Send one UDP datagram (a TFTP read request) from the guest to ``address:port``."""
    vm.exec(shell=f"timeout 2 tftp -g -r probe -l /tmp/tftp.out {address} {port} >/dev/null 2>&1; true", timeout=30)


def host_targets() -> list[str]:
    """How a guest might name the host: slirp's alias for the host's loopback, then every host address
    (IPv6 ones too: slirp gives the guest fec0::/64 by router advertisement, fec0::2 being the host)."""
    own = {"127.0.0.1", "::1"}  # in the guest these are the guest itself
    return ["10.0.2.2", "fec0::2", *(a for a in host_addresses() if a not in own)]


def qemu_net_namespace(vm: MicroVM) -> tuple[str, list[str]]:
    """The QEMU process's network namespace and the interfaces in it."""
    ns = os.readlink(f"/proc/{vm.pid}/ns/net")
    lines = Path(f"/proc/{vm.pid}/net/dev").read_text().splitlines()[2:]
    return ns, sorted(line.split(":", 1)[0].strip() for line in lines)


def assert_host_unreachable(vm: MicroVM, host_listener: HostListener) -> None:
    for address in host_targets():
        said = tcp(vm, address, host_listener.port)
        assert "host-listener" not in said and not said.endswith("status=0"), (address, said)
        udp(vm, address, host_listener.port)
    fetched = vm.exec(shell=f"timeout 5 wget -qO- http://10.0.2.2:{host_listener.port}/ 2>&1; echo status=$?",
                      timeout=30).stdout.decode()
    assert "host-listener" not in fetched and "status=0" not in fetched, fetched
    assert host_listener.connections == []


def test_with_internet_a_guest_reaches_the_outside_world_and_never_the_host(
    busybox_disk: Path, data_dir: Path, outside: OutsideWorld, host_listener: HostListener
) -> None:
    with boot(busybox_disk, data_dir=data_dir, memory_mib=192, internet=True) as vm:
        assert vm.internet and vm.description.network
        # The outside world answers, over TCP and UDP (the positive control for every refusal below).
        assert "outside-world" in tcp(vm, outside.address, outside.port)
        udp(vm, outside.address, outside.port)
        kinds = [e.split()[0] for e in outside.wait_events(2)]
        assert kinds[0] == "tcp" and set(kinds[1:]) == {"udp"}, kinds  # tftp retries: one datagram or more
        # The host's loopback (10.0.2.2 in slirp) and every host address, the veth's host side included, refuse.
        assert outside.host_side in host_targets()
        assert_host_unreachable(vm, host_listener)
        said = tcp(vm, outside.host_side, host_listener.port)
        assert "refused" in said, said  # refused at once by the host rules (TCP reset), not timed out
    assert host_listener.connections == []


def test_without_internet_no_packet_leaves_the_guest(
    busybox_disk: Path, data_dir: Path, outside: OutsideWorld, host_listener: HostListener
) -> None:
    with boot(busybox_disk, data_dir=data_dir, memory_mib=192, internet=False) as vm:
        assert not vm.internet and vm.description.network  # the NIC is there; it leads nowhere
        ns, interfaces = qemu_net_namespace(vm)
        assert ns != os.readlink("/proc/self/ns/net") and interfaces == ["lo"]  # QEMU has nowhere to send
        said = tcp(vm, outside.address, outside.port)
        assert "outside-world" not in said and "unreachable" in said, said
        udp(vm, outside.address, outside.port)
        dns = vm.exec(shell="timeout 8 nslookup example.com 2>&1; echo status=$?", timeout=30).stdout.decode()
        assert "status=0" not in dns, dns
        assert_host_unreachable(vm, host_listener)
    assert outside.wait_events(1, timeout=1.0) == []
    assert host_listener.connections == []


def test_each_restore_chooses_internet_and_the_nic_is_part_of_the_machine(
    busybox_disk: Path, data_dir: Path, tmp_path: Path, outside: OutsideWorld, host_listener: HostListener
) -> None:
    with boot(busybox_disk, data_dir=data_dir, memory_mib=192, internet=False) as vm:
        artifact = vm.snapshot(tmp_path / "artifact")
    assert artifact.description.network
    with restore(artifact, data_dir=data_dir, internet=True) as online, \
            restore(artifact, data_dir=data_dir, internet=False) as offline:
        assert online.internet and not offline.internet
        assert "outside-world" in tcp(online, outside.address, outside.port)
        assert "outside-world" not in tcp(offline, outside.address, outside.port)
        assert qemu_net_namespace(offline)[1] == ["lo"]
        assert_host_unreachable(online, host_listener)
    assert [e.split()[0] for e in outside.wait_events(1)] == ["tcp"]  # the online restore's connection only
    assert host_listener.connections == []


def test_an_artifact_without_a_nic_restores_without_network(
    busybox_disk: Path, data_dir: Path, tmp_path: Path
) -> None:
    with boot(busybox_disk, data_dir=data_dir, memory_mib=192, nic=False) as vm:
        artifact = vm.snapshot(tmp_path / "artifact")
    assert not artifact.description.network
    with restore(artifact, data_dir=data_dir, internet=True) as sandbox:
        assert not sandbox.internet
        interfaces = sandbox.exec(["ls", "/sys/class/net"]).stdout.decode().split()
        assert interfaces == ["lo"]


def test_the_host_rules_confine_only_the_isolation_group() -> None:
    text = host_ruleset(confined_gid=4242)
    assert text.count("meta skgid 4242") == 1 and "fib daddr type { local" in text
    assert "169.254.0.0/16" in text and "fe80::/10" in text and 'oifname "lo"' in text
    with pytest.raises(ValueError):
        host_ruleset(confined_gid=0)
    assert get_settings().isolation_gid > 0
