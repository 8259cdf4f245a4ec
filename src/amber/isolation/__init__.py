"""Network isolation of everything Amber runs on a user's behalf: guest VMs, BuildKit ``RUN`` containers and
host-side fetches (``git_clone``, Dockerfile ``ADD <url>``).

Public API:

- ``confine(argv, internet=)`` → the argv that runs ``argv`` confined: with ``internet`` its sockets reach
  only the outside world; without, it runs in an empty network namespace and no packet can leave it
- ``ensure_host_rules()`` installs (once per process) and checks the host's nftables table ``inet amber``
- ``ensure_bridge(name)``/``remove_bridge(name)``: the bridge of a managed dockerd's build containers
- ``host_ruleset(gid, pool)`` the tables' text (pure); ``IsolationError``

Guarantees and limits:

- Internet on: the process runs with the dedicated group ``Settings.isolation_gid``; the table rejects every
  packet its sockets send to a host address (loopback, every address of every interface, broadcast,
  multicast), to link-local and other special ranges (cloud metadata at 169.254.169.254), and out of a
  BuildKit bridge (``amber-bk*``), so neither the host, nor other guests, nor build containers are
  reachable. DNS works when the host's resolver is not on a host address.
- Build containers (BuildKit ``RUN`` with internet) sit on a bridge ``amber-bk*`` in the build network pool:
  the host rejects everything they send to it, forwards the rest to the outside world (NAT) but never to
  another container or the special ranges. IPv4 forwarding is turned on for that, as Docker does.
- Internet off: an empty network namespace (no interface but a down ``lo``); every connect fails at once.
- Fail closed: ``confine(internet=True)`` raises ``IsolationError`` when the table cannot be installed or has
  disappeared (checked before every launch), never runs the process unconfined.
- The table is the same for every Amber process on the host (no per-process state), so concurrent servers
  and tests replacing it atomically is harmless.
"""

from amber.isolation.bridge import Bridge, bridge_name, ensure_bridge, remove_bridge
from amber.isolation.host import IsolationError, confine, ensure_host_rules
from amber.isolation.rules import TABLE, host_ruleset

__all__ = [
    "TABLE",
    "Bridge",
    "IsolationError",
    "bridge_name",
    "confine",
    "ensure_bridge",
    "ensure_host_rules",
    "host_ruleset",
    "remove_bridge",
]
