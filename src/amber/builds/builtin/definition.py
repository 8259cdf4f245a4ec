"""What a builtin template is made of, as data, and the keys that decide when it is rebuilt. Pure.

A ``BuiltinDefinition`` names the Debian suite and packages of its root tree, the tree's recipe (``RECIPE``),
the runtime defaults (user, workdir, env), the VM shape and disk size, and a command run once before the
snapshot. Three keys, each over canonical JSON:

1. ``tree_key``: suite, variant, packages, hostname, recipe — the debootstrap tree (the slow part, ~1 min);
2. ``disk_key``: ``tree_key`` + disk size — the ext4 image made from the tree;
3. ``definition_hash``: everything, plus the guest fingerprint (kernel, initramfs, agent, QEMU, accel) — the
   template artifact. A change of runtime settings or shape rebuilds only the artifact (boot + snapshot).

``BASE`` is ``nullspace/base``: what the SDK's ``Machine.create()`` and ``Template.from_template("base")`` ask for.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from amber.builds.planning.digests import digest_json
from amber.builds.planning.runtime import DEFAULT_PATH, RuntimeDefaults

# Bump when the tree recipe (``amber.builds.builtin.build._customise``) changes what it writes into the tree.
RECIPE = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class BuiltinDefinition:
    """One builtin template (namespace ``nullspace``)."""

    name: str
    description: str
    suite: str  # Debian suite for debootstrap
    variant: str  # debootstrap --variant
    packages: tuple[str, ...]  # debootstrap --include (dependencies resolved, recommends not)
    user: str
    workdir: str  # the default cwd of commands; created in the VM before the snapshot
    env: tuple[tuple[str, str], ...]  # the runtime env (template ``runtime_env``; the agent's base env too)
    hostname: str
    vcpus: int
    memory_mib: int
    disk_mib: int  # size of the root ext4 (sparse): the guest's free space is this minus the tree
    warm: str  # shell command run once before the snapshot: restores find its files in the page cache
    default_tag: str
    tags: tuple[str, ...]  # every tag the artifact carries (includes ``default_tag``)

    @property
    def env_map(self) -> dict[str, str]:
        return dict(self.env)

    def tree_key(self) -> str:
        return digest_json({"kind": "builtin-tree", "suite": self.suite, "variant": self.variant,
                            "packages": sorted(self.packages), "hostname": self.hostname,
                            "recipe": RECIPE})  # fmt: skip

    def disk_key(self) -> str:
        return digest_json({"kind": "builtin-disk", "tree": self.tree_key(), "disk_mib": self.disk_mib})

    def definition_hash(self, guest_fingerprint: str) -> str:
        """The artifact's identity: a change of any field or of the guest means a rebuild."""
        return digest_json({"kind": "builtin-artifact", "definition": self.to_json(), "guest": guest_fingerprint})

    def runtime_defaults(self) -> RuntimeDefaults:
        return RuntimeDefaults(user=self.user, workdir=self.workdir, env=self.env_map, start_cmd=None, readiness=None)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["packages"] = list(self.packages)
        out["env"] = self.env_map
        out["tags"] = list(self.tags)
        return out


BASE = BuiltinDefinition(
    name="base",
    description="Debian 12 (bookworm) with Python 3, pip, bash, curl, procps and iproute2; workdir /workspace",
    suite="bookworm",
    variant="minbase",
    # python3-pip: the SDK's pip_install step runs `pip install` (allowed system-wide by /etc/pip.conf);
    # curl and netbase (/etc/services, /etc/protocols) for network work; iproute2 for `ip`.
    packages=("python3", "python3-pip", "bash", "ca-certificates", "procps", "curl", "netbase", "iproute2"),
    user="root",
    workdir="/workspace",
    env=(("PATH", DEFAULT_PATH), ("HOME", "/root"), ("LANG", "C.UTF-8")),
    hostname="sandbox",
    vcpus=2,  # the SDK's default Machine.create() shape: restores need no re-size
    memory_mib=512,
    disk_mib=2048,
    warm="python3 -c 'import http.server, json, ssl, subprocess, urllib.request' && bash -c true && ps >/dev/null",
    default_tag="latest",
    tags=("latest", "default"),
)

BUILTINS = (BASE,)


def artifact_id(definition: BuiltinDefinition, definition_hash: str) -> str:
    """The artifact id of a builtin's build (stable: hosts with the same definition and guest agree)."""
    return f"tmpl_{definition.name}_{_hex(definition_hash)[:20]}"


def build_id(definition: BuiltinDefinition, definition_hash: str) -> str:
    return f"tb_{definition.name}_{_hex(definition_hash)[:20]}"


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def short(digest: str) -> str:
    """A digest as the 16 hex digits used in file names."""
    return _hex(digest)[:16]


_DEB822_FIELD = re.compile(r"^([A-Za-z-]+):\s*(.*)$")


def mirror_from_apt_sources(deb822: list[str], one_line: list[str], suite: str) -> str | None:
    """The Debian mirror apt uses for ``suite`` on this host: the first ``deb`` source (deb822 ``.sources`` stanzas,
    then one-line ``sources.list`` entries) whose suites include exactly ``suite``; None when there is none."""
    for text in deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                match = _DEB822_FIELD.match(line)
                if match and not line.startswith("#"):
                    fields[match.group(1).lower()] = match.group(2).strip()
            if (fields.get("enabled", "yes").lower() != "no" and "deb" in fields.get("types", "").split()
                    and suite in fields.get("suites", "").split() and fields.get("uris")):
                return fields["uris"].split()[0]
    for text in one_line:
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    return None
