"""Installing the host rules and launching confined processes (effectful half of ``amber.isolation``)."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import threading
from collections.abc import Sequence

from amber.isolation.rules import TABLE, host_ruleset, ruleset_marker
from amber.settings import get_settings

NFT = "nft"
SETPRIV = "/usr/bin/setpriv"
UNSHARE = "/usr/bin/unshare"

_lock = threading.Lock()


class IsolationError(Exception):
    """The host cannot isolate a process as asked (nftables missing, the table gone, no privileges)."""


def _nft() -> str:
    path = shutil.which(NFT) or shutil.which(NFT, path="/usr/sbin:/sbin")
    if not path:
        raise IsolationError("network isolation needs nftables (apt-get install nftables; scripts/setup.sh)")
    return path


def _run_nft(args: Sequence[str], script: str | None = None) -> str:
    result = subprocess.run([_nft(), *args], input=script, capture_output=True, text=True, timeout=30,
                            check=False)  # fmt: skip
    if result.returncode != 0:
        raise IsolationError(f"nft {' '.join(args)} failed: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _table_present(marker: str) -> bool:
    try:
        listed = _run_nft(["list", "table", "inet", TABLE])
    except IsolationError:
        return False
    return f'comment "{marker}"' in listed


def ensure_host_rules() -> int:
    """Make sure tables ``inet amber`` and ``bridge amber`` are installed, of this version and for these
    settings (checked on every call: an administrator's ``nft flush ruleset`` removes them; they are then
    installed again). Returns the isolation gid. Raises ``IsolationError`` when they cannot be installed."""
    settings = get_settings()
    gid, pool = settings.isolation_gid, settings.build_network_pool
    marker = ruleset_marker(gid, str(ipaddress.IPv4Network(pool)))
    with _lock:
        if _table_present(marker):
            return gid
        _run_nft(["-f", "-"], host_ruleset(confined_gid=gid, build_pool=pool))
        if not _table_present(marker):
            raise IsolationError(f"the nftables table inet {TABLE} did not take ({marker})")
        return gid


def confine(argv: Sequence[str], *, internet: bool) -> list[str]:
    """``argv`` wrapped so that it runs network-isolated (see the package docstring). With ``internet`` it
    runs as root with the isolation group as its only group; without, in a fresh empty network namespace."""
    if internet:
        gid = ensure_host_rules()
        # Changing the group clears a parent-death signal set before it (prctl(2)): set it again after, so the
        # process still dies with its owner.
        return [SETPRIV, f"--regid={gid}", "--clear-groups", "--", SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    return [UNSHARE, "--net", "--", *argv]
