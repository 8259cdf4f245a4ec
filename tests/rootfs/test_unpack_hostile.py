"""Hostile layers: nothing may be written, linked or removed outside the target, and rejections name the entry.

Each test puts a canary directory next to the target and checks it is byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from amber.oci.errors import LayerRejectedError, UnsafeLayerError, UnsupportedEntryError
from amber.rootfs.unpack import unpack_tar_stream
from tests.support.images import EntryType, TarEntry, tar_entries

LAYER = "sha256:" + "ab" * 32


@dataclass
class Scene:
    target: Path
    outside: Path
    canary: Path

    def state(self) -> list[tuple[str, bytes, int, int]]:
        out = []
        for path in sorted(self.outside.rglob("*")):
            st = path.lstat()
            data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            out.append((str(path), data, st.st_mode, st.st_nlink))
        return out


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary"
    canary.write_bytes(b"original canary\n")
    s = Scene(tmp_path / "work" / "target", outside, canary)
    s.target.mkdir(parents=True)
    before = s.state()
    yield s
    assert s.state() == before, "something outside the target changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "work"]
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["target"]


def _unpack(scene: Scene, *entries: TarEntry) -> None:
    unpack_tar_stream(io.BytesIO(tar_entries(entries)), scene.target, layer=LAYER)


def _rejected(scene: Scene, cls: type[LayerRejectedError], entry: str, *entries: TarEntry) -> LayerRejectedError:
    with pytest.raises(cls) as caught:
        _unpack(scene, *entries)
    assert caught.value.entry == entry and caught.value.layer == LAYER
    assert repr(entry) in str(caught.value) and LAYER in str(caught.value)
    return caught.value


@pytest.mark.parametrize("name", ["../outside/canary", "a/../../outside/canary", "./../../outside/pwned"])
def test_dotdot_traversal_is_rejected(scene: Scene, name: str) -> None:
    _rejected(scene, UnsafeLayerError, name, TarEntry(name, data=b"pwned"))


def test_absolute_names_stay_inside(scene: Scene) -> None:
    _unpack(scene, TarEntry(str(scene.canary), data=b"pwned"), TarEntry("/etc/abs", data=b"ok"))
    assert (scene.target / str(scene.canary).lstrip("/")).read_bytes() == b"pwned"
    assert (scene.target / "etc/abs").read_bytes() == b"ok"


@pytest.mark.parametrize("link", ["outside-abs", "outside-rel", "root-climb"])
def test_symlinked_parent_cannot_escape(scene: Scene, link: str) -> None:
    targets = {
        "outside-abs": str(scene.outside),
        "outside-rel": "../../outside",
        "root-climb": "../../../../../../../..",
    }
    _unpack(
        scene,
        TarEntry("escape", EntryType.SYMLINK, linkname=targets[link]),
        TarEntry("escape/canary", data=b"pwned"),
        TarEntry("escape/.wh.canary"),  # a whiteout through the link must not delete the real canary
        TarEntry("escape/new", data=b"pwned"),
    )
    assert os.readlink(scene.target / "escape") == targets[link]  # symlink targets are data, kept verbatim
    written = [p for p in scene.target.rglob("new") if p.read_bytes() == b"pwned"]
    assert len(written) == 1 and written[0].resolve().is_relative_to(scene.target.resolve())


def test_opaque_whiteout_through_symlink_stays_inside(scene: Scene) -> None:
    _unpack(scene, TarEntry("escape", EntryType.SYMLINK, linkname=str(scene.outside)),
            TarEntry("escape/.wh..wh..opq"))


def test_file_over_symlink_replaces_the_link(scene: Scene) -> None:
    _unpack(
        scene,
        TarEntry("link", EntryType.SYMLINK, linkname=str(scene.canary)),
        TarEntry("link", data=b"pwned", mode=0o4755),
    )
    assert not (scene.target / "link").is_symlink()
    assert (scene.target / "link").read_bytes() == b"pwned"


@pytest.mark.parametrize("linkname", ["../outside/canary", "../../outside/canary"])
def test_hard_link_out_of_the_tree_is_rejected(scene: Scene, linkname: str) -> None:
    error = _rejected(scene, UnsafeLayerError, "hl", TarEntry("hl", EntryType.HARDLINK, linkname=linkname))
    assert "hard link" in str(error)


def test_hard_link_to_absolute_host_path_resolves_inside(scene: Scene) -> None:
    error = _rejected(scene, LayerRejectedError, "hl",
                      TarEntry("hl", EntryType.HARDLINK, linkname=str(scene.canary)))
    assert "does not exist" in str(error)


def test_hard_link_through_symlinked_parent_resolves_inside(scene: Scene) -> None:
    _rejected(
        scene, LayerRejectedError, "hl",
        TarEntry("esc", EntryType.SYMLINK, linkname=str(scene.outside)),
        TarEntry("hl", EntryType.HARDLINK, linkname="esc/canary"),
    )


@pytest.mark.parametrize(
    ("entry", "what"),
    [
        (TarEntry("dev/fifo", EntryType.FIFO), "FIFO"),
        (TarEntry("dev/null", EntryType.CHAR, devmajor=1, devminor=3), "character device"),
        (TarEntry("dev/sda", EntryType.BLOCK, devmajor=8, devminor=0), "block device"),
        (TarEntry("run/app.sock", EntryType.SOCKET, mode=0o755), "socket"),
    ],
)
def test_special_files_are_rejected(scene: Scene, entry: TarEntry, what: str) -> None:
    error = _rejected(scene, UnsupportedEntryError, entry.name, TarEntry("dev/", EntryType.DIR), entry)
    assert what in str(error)


def test_whiteout_of_dotdot_is_rejected(scene: Scene) -> None:
    _rejected(scene, UnsafeLayerError, "a/.wh..", TarEntry("a/", EntryType.DIR), TarEntry("a/.wh.."))
