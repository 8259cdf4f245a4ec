"""The host's nftables tables ``inet amber`` and ``bridge amber`` (pure: text from settings, no effects).

Confined processes (guests with internet, host-side fetches for users) are the sockets of processes in the
isolation group; build containers are whatever enters the host from a BuildKit bridge (``amber-bk*``, its
addresses inside the build network pool). Rules:

1. A confined socket may not send to any host address (``fib daddr type local`` covers loopback and every
   interface address, whatever they are at packet time), to broadcast, multicast or anycast, nor out of the
   loopback interface.
2. Nor to special ranges that are never "the outside world": 0.0.0.0/8, link-local 169.254.0.0/16 (cloud
   metadata), multicast and reserved 224.0.0.0/3; ``::``, v4-mapped ``::ffff:0:0/96``, link-local fe80::/10,
   multicast ff00::/8.
3. Nor out of a BuildKit bridge: build containers are other guests.
4. A build container may not reach the host: every packet arriving from a BuildKit bridge for the host
   itself (``input``) is rejected, so no host address (nor the bridge's own gateway address) answers.
5. Forwarded from a BuildKit bridge: never into a BuildKit bridge (another container, on this bridge or
   another: routed, or bridged through br_netfilter), never to the special ranges of 2.; the rest is the
   outside world, masqueraded behind the host's address. Into a BuildKit bridge only replies
   (``ct state established,related``).
6. ``bridge amber``: frames between two addresses of the build pool are dropped on the bridge itself (no
   container talks to another even without br_netfilter).

Everything rejected gets an ICMP "administratively prohibited" (a TCP reset for TCP), so a connect fails at
once instead of timing out. Other tables on the host may still drop what these accept (e.g. Docker's
``FORWARD`` policy ``DROP``), which only ever takes connectivity away.
"""

from __future__ import annotations

import ipaddress

TABLE = "amber"
BRIDGE_PREFIX = "amber-bk"  # BuildKit bridges; nftables matches ``amber-bk*``

_V4_SPECIAL = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3")
_V6_SPECIAL = ("::/127", "::ffff:0:0/96", "fe80::/10", "ff00::/8")


RULESET_VERSION = 2


def ruleset_marker(confined_gid: int, build_pool: str) -> str:
    """The comment of table ``inet amber``: tells an installed table of this version and these settings."""
    return f"amber isolation v{RULESET_VERSION} gid {confined_gid} pool {build_pool}"


def host_ruleset(*, confined_gid: int, build_pool: str = "10.213.0.0/16") -> str:
    """The nft script that atomically replaces tables ``inet amber`` and ``bridge amber`` (``nft -f -``)."""
    if not 0 < confined_gid < 1 << 32:
        raise ValueError(f"isolation gid must be a positive 32-bit number, got {confined_gid}")
    pool = ipaddress.IPv4Network(build_pool)  # raises ValueError for anything but an IPv4 network
    reject = "reject with icmpx admin-prohibited"
    bridges = f'"{BRIDGE_PREFIX}*"'
    special = [f"ip daddr {{ {', '.join(_V4_SPECIAL)} }} {reject}",
               f"ip6 daddr {{ {', '.join(_V6_SPECIAL)} }} {reject}"]  # fmt: skip
    lines = [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",  # after the line above it exists, so this never fails
        f"table bridge {TABLE}",
        f"delete table bridge {TABLE}",
        f"table inet {TABLE} {{",
        f'  comment "{ruleset_marker(confined_gid, str(pool))}"',
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        f"    meta skgid {confined_gid} jump confined",
        "  }",
        "  chain confined {",
        "    meta l4proto tcp fib daddr type { local, broadcast, multicast, anycast } reject with tcp reset",
        f"    fib daddr type {{ local, broadcast, multicast, anycast }} {reject}",
        f'    oifname "lo" {reject}',
        *(f"    {rule}" for rule in special),
        f"    oifname {bridges} {reject}",
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f"    iifname {bridges} meta l4proto tcp reject with tcp reset",
        f"    iifname {bridges} {reject}",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f"    iifname {bridges} jump from_builds",
        f"    oifname {bridges} ct state established,related accept",
        f"    oifname {bridges} drop",
        "  }",
        "  chain from_builds {",
        f"    oifname {bridges} drop",
        *(f"    {rule}" for rule in special),
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f"    ip saddr {pool} oifname != {bridges} masquerade",
        "  }",
        "}",
        f"table bridge {TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f"    ip saddr {pool} ip daddr {pool} drop",
        "  }",
        "}",
        "",
    ]
    return "\n".join(lines)
