"""Property: whatever sequence of links, files, hard links and whiteouts a layer holds, unpacking never
changes anything outside the target, and either succeeds or raises a LayerRejectedError."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amber.oci.errors import ImageImportError, LayerRejectedError
from amber.rootfs.unpack import unpack_tar_stream
from tests.support.images import EntryType, TarEntry, tar_entries

_segment = st.sampled_from(["a", "b", "..", ".", "esc", "x", ".wh.a", ".wh..wh..opq", ".wh.esc"])
_name = st.lists(_segment, min_size=1, max_size=4).map("/".join) | st.sampled_from(["/a", "/esc/x", "./b/"])
_target = st.sampled_from(["..", "../..", "/", "OUTSIDE", "OUTSIDE/canary", "a", "../outside", "esc/../.."])


@st.composite
def _entries(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    kinds = st.sampled_from(["file", "dir", "symlink", "hardlink"])
    return draw(st.lists(st.tuples(kinds, _name, _target), min_size=1, max_size=8))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_entries())
def test_no_layer_changes_anything_outside(entries: list[tuple[str, str, str]]) -> None:
    base = Path(tempfile.mkdtemp(prefix="amber-fuzz-"))
    try:
        outside = base / "outside"
        outside.mkdir()
        (outside / "canary").write_bytes(b"canary")
        target = base / "work" / "target"
        target.mkdir(parents=True)
        tar_list = []
        for kind, name, link in entries:
            link = link.replace("OUTSIDE", str(outside))
            if kind == "file":
                tar_list.append(TarEntry(name, EntryType.FILE, b"pwned", mode=0o4777))
            elif kind == "dir":
                tar_list.append(TarEntry(name, EntryType.DIR, mode=0o777))
            elif kind == "symlink":
                tar_list.append(TarEntry(name, EntryType.SYMLINK, linkname=link))
            else:
                tar_list.append(TarEntry(name, EntryType.HARDLINK, linkname=link))
        with contextlib.suppress(LayerRejectedError):  # rejecting is fine; escaping is not
            unpack_tar_stream(io.BytesIO(tar_entries(tar_list)), target, layer="fuzz")
        assert sorted(os.listdir(outside)) == ["canary"]
        assert (outside / "canary").read_bytes() == b"canary"
        assert os.stat(outside / "canary").st_nlink == 1
        assert sorted(os.listdir(base)) == ["outside", "work"]
        assert os.listdir(base / "work") == ["target"]
        for dirpath, dirnames, filenames in os.walk(target):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                if not path.is_symlink() and path.is_file():
                    assert os.stat(path).st_ino != os.stat(outside / "canary").st_ino
    finally:
        shutil.rmtree(base)


_VALID = tar_entries([
    TarEntry("d/", EntryType.DIR), TarEntry("d/f", data=b"x" * 700, xattrs={"user.a": b"1"}),
    TarEntry("d/" + "long" * 40, data=b"y"), TarEntry("l", EntryType.SYMLINK, linkname="d/f"),
    TarEntry("h", EntryType.HARDLINK, linkname="d/f"),
])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.none() | st.integers(0, len(_VALID)))
def test_corrupted_tars_fail_with_import_errors_only(flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(_VALID)
    for position, value in flips:
        data[position] = value
    if cut is not None:
        del data[cut:]
    base = Path(tempfile.mkdtemp(prefix="amber-fuzz-"))
    try:
        with contextlib.suppress(ImageImportError):
            unpack_tar_stream(io.BytesIO(bytes(data)), base / "target", layer="corrupt")
        assert os.listdir(base) == ["target"]
    finally:
        shutil.rmtree(base)
