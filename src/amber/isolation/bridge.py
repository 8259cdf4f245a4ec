"""BuildKit bridges: the Linux bridge a managed dockerd attaches its build containers to (``--bridge=``).

``ensure_bridge(name)`` creates the bridge (if absent) with the first free /24 of ``Settings.build_network_pool``
(gateway ``.1``), turns on what routing it needs (IPv4 forwarding, as Docker itself does, and the
br_netfilter hooks when the kernel has them) and installs the host rules, so containers on it reach the
outside world only. ``remove_bridge(name)`` deletes it. Names start with ``amber-bk`` (the rules match them
by that prefix) and fit the kernel's 15 characters.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.isolation.host import IsolationError, ensure_host_rules
from amber.isolation.rules import BRIDGE_PREFIX
from amber.settings import get_settings

IP = "/usr/sbin/ip"
LOCK = Path("/run/amber/bridges.lock")
_SYSCTLS = (
    Path("/proc/sys/net/ipv4/ip_forward"),
    Path("/proc/sys/net/bridge/bridge-nf-call-iptables"),  # present only with br_netfilter
    Path("/proc/sys/net/bridge/bridge-nf-call-ip6tables"),
)


@dataclass(frozen=True)
class Bridge:
    name: str
    gateway: ipaddress.IPv4Interface  # the bridge's own address, e.g. 10.213.7.1/24


def _ip(*args: str) -> str:
    result = subprocess.run([IP, *args], capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise IsolationError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _addresses() -> list[dict[str, Any]]:
    return list(json.loads(_ip("-j", "addr") or "[]"))


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network a host interface or route already covers."""
    used = []
    for link in _addresses():
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                used.append(ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network)
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    return used


def bridge_name(token: str) -> str:
    """``amber-bk`` plus the first 7 characters of ``token`` (15 characters: the kernel's limit)."""
    return f"{BRIDGE_PREFIX}{token[:7]}"


def _existing(name: str) -> Bridge | None:
    for link in _addresses():
        if link.get("ifname") != name:
            continue
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                return Bridge(name, ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}"))
        return Bridge(name, ipaddress.IPv4Interface("0.0.0.0/32"))
    return None


def ensure_bridge(name: str) -> Bridge:
    """The bridge ``name``, up, with a /24 of the build pool; forwarding on; host rules installed."""
    if not name.startswith(BRIDGE_PREFIX) or len(name) > 15:
        raise IsolationError(f"bridge name {name!r} must start with {BRIDGE_PREFIX!r} and fit 15 characters")
    pool = ipaddress.IPv4Network(get_settings().build_network_pool)
    ensure_host_rules()
    for path in _SYSCTLS:
        if path.exists() and path.read_text().strip() != "1":
            try:
                path.write_text("1\n")
            except OSError as e:
                raise IsolationError(f"cannot enable {path}: {e}") from None
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # processes creating bridges at once never pick the same /24
        return _ensure_bridge_locked(name, pool)


def _ensure_bridge_locked(name: str, pool: ipaddress.IPv4Network) -> Bridge:
    bridge = _existing(name)
    if bridge is not None and bridge.gateway.ip in pool:
        _ip("link", "set", name, "up")
        return bridge
    if bridge is not None:  # an address outside the pool: the rules would not cover it
        _ip("link", "del", name)
    used = _used_networks()
    for subnet in pool.subnets(new_prefix=24):
        if any(subnet.overlaps(other) for other in used):
            continue
        gateway = ipaddress.IPv4Interface(f"{subnet.network_address + 1}/24")
        _ip("link", "add", name, "type", "bridge")
        try:
            _ip("addr", "add", str(gateway), "dev", name)
            _ip("link", "set", name, "up")
        except IsolationError:
            remove_bridge(name)
            raise
        return Bridge(name, gateway)
    raise IsolationError(f"no free /24 left in the build network pool {pool}")


def remove_bridge(name: str) -> None:
    """Delete the bridge (its containers are gone with their dockerd); absent is fine."""
    if name.startswith(BRIDGE_PREFIX) and _existing(name) is not None:
        subprocess.run([IP, "link", "del", name], capture_output=True, check=False, timeout=30)
