"""The builtin definition (pure): which changes rebuild the tree, the disk or only the artifact; ids; the mirror
taken from the host's apt sources."""

from __future__ import annotations

from dataclasses import replace

from amber.builds.builtin.definition import BASE, artifact_id, build_id, mirror_from_apt_sources
from amber.contract.template_refs import parse_ref

GUEST = "sha256:" + "1" * 64


def test_runtime_changes_rebuild_only_the_artifact() -> None:
    for changed in (replace(BASE, env=(*BASE.env, ("EXTRA", "1"))), replace(BASE, workdir="/work"),
                    replace(BASE, vcpus=1), replace(BASE, memory_mib=1024), replace(BASE, warm="true"),
                    replace(BASE, user="nobody")):  # fmt: skip
        assert changed.tree_key() == BASE.tree_key() and changed.disk_key() == BASE.disk_key()
        assert changed.definition_hash(GUEST) != BASE.definition_hash(GUEST)


def test_tree_and_disk_keys() -> None:
    more = replace(BASE, packages=(*BASE.packages, "git"))
    assert more.tree_key() != BASE.tree_key() and more.disk_key() != BASE.disk_key()
    reordered = replace(BASE, packages=tuple(reversed(BASE.packages)))
    assert reordered.tree_key() == BASE.tree_key()
    bigger = replace(BASE, disk_mib=4096)
    assert bigger.tree_key() == BASE.tree_key() and bigger.disk_key() != BASE.disk_key()
    assert replace(BASE, suite="trixie").tree_key() != BASE.tree_key()
    assert replace(BASE, hostname="box").tree_key() != BASE.tree_key()  # /etc/hostname and /etc/hosts


def test_guest_changes_rebuild_the_artifact() -> None:
    assert BASE.definition_hash(GUEST) == BASE.definition_hash(GUEST)
    assert BASE.definition_hash("sha256:" + "2" * 64) != BASE.definition_hash(GUEST)


def test_base_is_what_the_sdk_asks_for() -> None:
    assert (BASE.name, BASE.vcpus, BASE.memory_mib) == ("base", 2, 512)
    assert BASE.workdir == "/workspace" and BASE.user == "root"
    assert {"python3", "bash", "ca-certificates", "procps"} <= set(BASE.packages)
    assert {"PATH", "HOME", "LANG"} <= set(BASE.env_map)
    assert BASE.default_tag == "latest" and BASE.default_tag in BASE.tags
    runtime = BASE.runtime_defaults()
    assert runtime.start_cmd is None and runtime.readiness is None
    assert runtime.to_json() == {"default_env_keys": ["HOME", "LANG", "PATH"], "default_user": "root",
                                 "default_workdir": "/workspace"}


def test_ids_are_refs_of_their_kind() -> None:
    digest = BASE.definition_hash(GUEST)
    ref = parse_ref(artifact_id(BASE, digest))
    assert ref.artifact_id == artifact_id(BASE, digest) and ref.artifact_id.startswith("tmpl_base_")
    assert parse_ref(f"base:{build_id(BASE, digest)}").build_id == build_id(BASE, digest)


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirror_from_apt_sources() -> None:
    assert mirror_from_apt_sources([DEB822], [], "bookworm") == "http://mirror.example/debian"
    assert mirror_from_apt_sources([DEB822], [], "bookworm-security") == "http://security.example/debian-security"
    disabled = DEB822.replace("Types: deb\n#", "Enabled: no\nTypes: deb\n#", 1)
    assert mirror_from_apt_sources([disabled], [], "bookworm") is None
    assert mirror_from_apt_sources([DEB822.replace("Types: deb", "Types: deb-src")], [], "bookworm") is None
    one_line = ("# deb http://old.example/debian bookworm main\n"
                "deb [signed-by=/k.gpg arch=amd64] http://list.example/debian bookworm main contrib\n")
    assert mirror_from_apt_sources([], [one_line], "bookworm") == "http://list.example/debian"
    assert mirror_from_apt_sources([], [one_line], "trixie") is None
    assert mirror_from_apt_sources([DEB822], [one_line], "bookworm") == "http://mirror.example/debian"
