"""The forward-only tar reader agrees with Python's tarfile on every format tarfile and GNU tar write."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from amber.rootfs.tarstream import TarFormatError, TarReader
from tests.support.busybox import make_busybox_tree

LONG = "d/" + "x" * 120 + "/" + "y" * 90  # fits ustar only through its prefix field


def _tarfile_tar(fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, kind, data, link in [
            ("d", tarfile.DIRTYPE, b"", ""), ("d/f", tarfile.REGTYPE, b"a" * 1000, ""),
            (LONG, tarfile.REGTYPE, b"long", ""), ("d/l", tarfile.SYMTYPE, b"", "/" + "t" * 150),
            ("d/h", tarfile.LNKTYPE, b"", "d/f"), ("big-uid", tarfile.REGTYPE, b"", ""),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            info.mode, info.mtime = 0o4755, 1_700_000_000
            info.uid = 3_000_000 if name == "big-uid" and fmt != tarfile.USTAR_FORMAT else 1000
            if fmt == tarfile.PAX_FORMAT and name == "d/f":
                info.pax_headers = {"SCHILY.xattr.user.k": "v", "SCHILY.xattr.security.capability": "\x01\x02"}
            if fmt == tarfile.USTAR_FORMAT and len(link) > 100:
                continue
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def _reference(data: bytes) -> list[tuple[object, ...]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        rows: list[tuple[object, ...]] = []
        for m in tar.getmembers():
            content = tar.extractfile(m).read() if m.isreg() else b""  # type: ignore[union-attr]
            xattrs = {k[13:]: v.encode("utf-8", "surrogateescape") for k, v in m.pax_headers.items()
                      if k.startswith("SCHILY.xattr.")}
            rows.append((m.name.rstrip("/"), m.type, m.mode, m.uid, m.gid, int(m.mtime), m.linkname, content, xattrs))
        return rows


def _ours(data: bytes) -> list[tuple[object, ...]]:
    reader = TarReader(io.BytesIO(data))
    rows: list[tuple[object, ...]] = []
    for m in reader:
        content = b"".join(reader.read_chunks())
        rows.append((m.name.rstrip("/"), m.type, m.mode, m.uid, m.gid, int(m.mtime), m.linkname, content, m.xattrs))
    return rows


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_agrees_with_tarfile(fmt: int) -> None:
    data = _tarfile_tar(fmt)
    assert _ours(data) == _reference(data)


def test_agrees_with_gnu_tar(tmp_path: Path) -> None:
    tree = make_busybox_tree(tmp_path / "tree")
    (tree / "etc" / ("n" * 150)).write_text("long name")
    data = subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(tree), "-cf", "-", "."],
                          capture_output=True, check=True).stdout
    assert _ours(data) == _reference(data)
    assert len(_ours(data)) > 100


def test_bad_checksum_is_a_format_error() -> None:
    data = bytearray(_tarfile_tar(tarfile.USTAR_FORMAT))
    data[0] ^= 0x01
    with pytest.raises(TarFormatError, match="checksum"):
        list(TarReader(io.BytesIO(bytes(data))))
