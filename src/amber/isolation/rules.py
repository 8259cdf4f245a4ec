"""The host's nftables table ``inet amber`` (pure: text from settings, no effects).

Rules, in order:

1. Sockets of processes running with the isolation group (confined guests and fetches) may not send to any
   host address (``fib daddr type local`` covers loopback and every interface address, whatever they are at
   packet time), to broadcast, multicast or anycast, nor out of the loopback interface.
2. Nor to special ranges that are never "the outside world": 0.0.0.0/8, link-local 169.254.0.0/16 (cloud
   metadata), multicast and reserved 224.0.0.0/3; ``::``, v4-mapped ``::ffff:0:0/96``, link-local fe80::/10,
   multicast ff00::/8.
3. Nor out of a BuildKit bridge (``amber-bk*``): build containers are other guests.

Everything rejected gets an ICMP "administratively prohibited" (a TCP reset for TCP), so a guest's connect
fails at once instead of timing out.
"""

from __future__ import annotations

TABLE = "amber"
BRIDGE_PREFIX = "amber-bk"  # BuildKit bridges; nftables matches ``amber-bk*``

_V4_SPECIAL = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3")
_V6_SPECIAL = ("::/127", "::ffff:0:0/96", "fe80::/10", "ff00::/8")


def host_ruleset(*, confined_gid: int) -> str:
    """The nft script that atomically replaces table ``inet amber`` (``nft -f -``)."""
    if not 0 < confined_gid < 1 << 32:
        raise ValueError(f"isolation gid must be a positive 32-bit number, got {confined_gid}")
    reject = "reject with icmpx admin-prohibited"
    return "\n".join([
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",  # after the line above it exists, so this never fails
        f"table inet {TABLE} {{",
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        f"    meta skgid {confined_gid} jump confined",
        "  }",
        "  chain confined {",
        "    meta l4proto tcp fib daddr type { local, broadcast, multicast, anycast } reject with tcp reset",
        f"    fib daddr type {{ local, broadcast, multicast, anycast }} {reject}",
        f"    oifname \"lo\" {reject}",
        f"    ip daddr {{ {', '.join(_V4_SPECIAL)} }} {reject}",
        f"    ip6 daddr {{ {', '.join(_V6_SPECIAL)} }} {reject}",
        f"    oifname \"{BRIDGE_PREFIX}*\" {reject}",
        "  }",
        "}",
        "",
    ])
