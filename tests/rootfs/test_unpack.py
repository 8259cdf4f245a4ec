"""Unpacking layers: OCI semantics (whiteouts, opaque dirs, links, modes, owners, xattrs) and compression."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from amber.oci.errors import ImageImportError, UnsupportedMediaTypeError
from amber.oci.media_types import Compression as OciCompression
from amber.rootfs.ext4 import ensure_mount_points
from amber.rootfs.unpack import StagingFullError, UnpackStats, open_layer, unpack_layers, unpack_tar_stream
from tests.rootfs import fidelity
from tests.rootfs.treecmp import diff, snapshot
from tests.support.images import Compression, EntryType, Layer, TarEntry, tar_entries


class _LayerFile:
    def __init__(self, path: Path, compression: OciCompression, digest: str) -> None:
        self.path, self.compression, self.digest = path, compression, digest


def _layer_file(tmp: Path, entries: list[TarEntry], compression: Compression, name: str) -> _LayerFile:
    layer = Layer.from_tar(tar_entries(entries), compression)
    path = tmp / name
    path.write_bytes(layer.data)
    return _LayerFile(path, OciCompression(compression.value), layer.digest)


def test_three_layers_unpack_to_the_expected_tree(tmp_path: Path) -> None:
    layers = [
        _layer_file(tmp_path, fidelity.layer1_entries(tmp_path), Compression.GZIP, "l1"),
        _layer_file(tmp_path, fidelity.LAYER2, Compression.ZSTD, "l2"),
        _layer_file(tmp_path, fidelity.LAYER3, Compression.NONE, "l3"),
    ]
    target = tmp_path / "target"
    stats = unpack_layers(layers, target)
    ensure_mount_points(target)
    expected = fidelity.materialize_expected(tmp_path / "expected")
    assert diff(snapshot(expected), snapshot(target)) == []
    assert stats.whiteouts == 3
    assert (target / "opt/fx/file").stat().st_mtime == TarEntry("x").mtime


def test_opaque_whiteout_keeps_same_layer_entries_in_any_order(tmp_path: Path) -> None:
    target = tmp_path / "t"
    unpack_tar_stream(io.BytesIO(tar_entries([
        TarEntry("d/", EntryType.DIR), TarEntry("d/old", data=b"1"), TarEntry("d/sub/", EntryType.DIR),
        TarEntry("d/sub/old", data=b"2"),
    ])), target)
    unpack_tar_stream(io.BytesIO(tar_entries([
        TarEntry("d/sub/", EntryType.DIR), TarEntry("d/sub/new", data=b"3"),
        TarEntry("d/.wh..wh..opq"), TarEntry("d/after", data=b"4"),
    ])), target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["d", "d/after", "d/sub", "d/sub/new"]


def test_existing_directory_is_merged_and_replaced_by_non_directory(tmp_path: Path) -> None:
    target = tmp_path / "t"
    unpack_tar_stream(io.BytesIO(tar_entries([
        TarEntry("d/", EntryType.DIR, mode=0o755), TarEntry("d/a", data=b"a"), TarEntry("e/", EntryType.DIR),
        TarEntry("e/x", data=b"x"),
    ])), target)
    unpack_tar_stream(io.BytesIO(tar_entries([
        TarEntry("d/", EntryType.DIR, mode=0o700, uid=5), TarEntry("d/b", data=b"b"),
        TarEntry("e", EntryType.SYMLINK, linkname="d"),
    ])), target)
    assert sorted(os.listdir(target / "d")) == ["a", "b"]
    assert (target / "d").stat().st_mode & 0o7777 == 0o700 and (target / "d").stat().st_uid == 5
    assert os.readlink(target / "e") == "d"


def test_declared_compression_is_checked_against_the_content(tmp_path: Path) -> None:
    gz = _layer_file(tmp_path, [TarEntry("f", data=b"x")], Compression.GZIP, "gz")
    with pytest.raises(UnsupportedMediaTypeError, match="declares zstd compression but the content is gzip"), \
            open_layer(gz.path, OciCompression.ZSTD, layer="sha256:abc"):
        pass
    raw = _layer_file(tmp_path, [TarEntry("f", data=b"x")], Compression.NONE, "raw")
    with pytest.raises(UnsupportedMediaTypeError, match="declares gzip compression but the content is uncompressed"), \
            open_layer(raw.path, OciCompression.GZIP, layer="sha256:abc"):
        pass


def test_garbage_is_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(ImageImportError, match="layer junk-layer is not a valid tar"):
        unpack_tar_stream(io.BytesIO(b"this is not a tar archive" * 40), tmp_path / "t", layer="junk-layer")


def test_gzip_without_isal_gives_the_same_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [TarEntry("d/", EntryType.DIR), TarEntry("d/f", data=os.urandom(300_000), mode=0o4755, uid=3)]
    layer = _layer_file(tmp_path, entries, Compression.GZIP, "l")
    unpack_layers([layer], tmp_path / "with-isal")
    monkeypatch.setitem(sys.modules, "isal", None)  # the standard-library fallback
    unpack_layers([layer], tmp_path / "stdlib")
    assert diff(snapshot(tmp_path / "with-isal"), snapshot(tmp_path / "stdlib")) == []
    assert (tmp_path / "stdlib/d/f").stat().st_mode & 0o7777 == 0o4755


def test_whiteout_under_a_file_is_a_no_op(tmp_path: Path) -> None:
    target = tmp_path / "t"
    unpack_tar_stream(io.BytesIO(tar_entries([TarEntry("a", data=b"file")])), target)
    unpack_tar_stream(io.BytesIO(tar_entries([TarEntry("a/.wh.b"), TarEntry("c", data=b"c")])), target)
    assert (target / "a").read_bytes() == b"file" and (target / "c").exists()


def test_allocation_limit_stops_a_tree_that_outgrows_its_budget(tmp_path: Path) -> None:
    stats = UnpackStats(allocation_limit=100_000)
    bomb = tar_entries([TarEntry(f"f{i}", data=b"\0" * 40_000) for i in range(5)])
    with pytest.raises(StagingFullError, match="staging budget of 100000 bytes"):
        unpack_tar_stream(io.BytesIO(bomb), tmp_path / "t", layer="bomb", stats=stats)
    assert stats.allocated <= 100_000
