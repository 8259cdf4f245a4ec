"""A three-layer image that exercises every OCI unpack rule, and the final tree it must produce.

Layer 1 (gzip): the busybox tree plus set-id files, sticky/set-gid dirs, ownership, xattrs (incl. a real
``security.capability``), hard links, absolute/relative/dangling symlinks, a merged-/usr ``lib -> usr/lib``.
Layer 2 (zstd): whiteouts of a file and a directory, an opaque directory (with an entry of the same layer
written before the marker, which must survive), a file written through the symlinked ``lib/`` parent, a
cross-layer hard link, a directory replaced by a file and a symlink replaced by a file.
Layer 3 (raw tar): a set-gid file, a user's dotfile, a directory with an xattr.

``EXPECTED`` is the final state, written independently of the unpacker by :func:`materialize_expected`.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from tests.support.busybox import make_busybox_tree
from tests.support.images import EntryType, TarEntry, tree_entries

# VFS_CAP_REVISION_2 | effective, permitted = CAP_NET_BIND_SERVICE (bit 10): a valid capability xattr.
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)

D, F, S, H = EntryType.DIR, EntryType.FILE, EntryType.SYMLINK, EntryType.HARDLINK

LAYER1_EXTRA = [
    TarEntry("opt/", D, mode=0o755),
    TarEntry("opt/fx/", D, mode=0o755),
    TarEntry("opt/fx/file", F, b"hello\n"),
    TarEntry("opt/fx/hardlink", H, linkname="opt/fx/file"),
    TarEntry("opt/fx/suid", F, b"\x7fELF fake", mode=0o4755, uid=1234, gid=5678,
             xattrs={"security.capability": CAPABILITY, "user.comment": b"suid file"}),
    TarEntry("opt/fx/sgid-dir/", D, mode=0o2750, uid=1001, gid=1002),
    TarEntry("opt/fx/sticky/", D, mode=0o1777),
    TarEntry("opt/fx/abs-link", S, linkname="/opt/fx/file", mode=0o777),
    TarEntry("opt/fx/rel-link", S, linkname="file", mode=0o777),
    TarEntry("opt/fx/dangling", S, linkname="/nonexistent/target", mode=0o777),
    TarEntry("opt/fx/gone", F, b"bye"),
    TarEntry("opt/fx/gonedir/", D),
    TarEntry("opt/fx/gonedir/child", F, b"c"),
    TarEntry("opt/fx/willbefile/", D, mode=0o755),
    TarEntry("opt/fx/willbefile/inner", F, b"x"),
    TarEntry("opt/opq/", D, mode=0o755),
    TarEntry("opt/opq/a", F, b"a"),
    TarEntry("opt/opq/sub/", D, mode=0o755),
    TarEntry("opt/opq/sub/c", F, b"c"),
    TarEntry("srv/", D, mode=0o755),
    TarEntry("srv/data/", D, mode=0o700, uid=1500, gid=1500),
    TarEntry("usr/lib/", D, mode=0o755),
    TarEntry("lib", S, linkname="usr/lib", mode=0o777),
    TarEntry("etc/motd", S, linkname="/etc/hostname", mode=0o777),
]

LAYER2 = [
    TarEntry("opt/fx/.wh.gone", F),
    TarEntry("opt/fx/.wh.gonedir", F),
    TarEntry("opt/opq/", D, mode=0o755),
    TarEntry("opt/opq/kept-same-layer", F, b"k"),
    TarEntry("opt/opq/.wh..wh..opq", F),
    TarEntry("opt/opq/new", F, b"new"),
    TarEntry("lib/libfoo.so", F, b"\x7fELF lib", mode=0o755),
    TarEntry("opt/fx/hl2", H, linkname="opt/fx/file"),
    TarEntry("opt/fx/willbefile", F, b"now a file", mode=0o600, uid=7, gid=8),
    TarEntry("etc/motd", F, b"welcome\n"),
]

LAYER3 = [
    TarEntry("opt/fx/sgid-file", F, b"g", mode=0o2755, gid=50),
    TarEntry("home/app/.profile", F, b"export A=1\n", uid=1000, gid=1000),
    TarEntry("opt/fx/xattr-dir/", D, mode=0o755, xattrs={"user.dirattr": b"d"}),
]


def layer1_entries(scratch: Path) -> list[TarEntry]:
    return tree_entries(make_busybox_tree(scratch / "busybox")) + LAYER1_EXTRA


def _write(path: Path, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    path.write_bytes(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def _mkdir(path: Path, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
    path.mkdir(exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def materialize_expected(root: Path) -> Path:
    """Write the tree the three layers must unpack to (plus the R37 mount points) with plain os calls."""
    make_busybox_tree(root)
    fx = root / "opt" / "fx"
    _mkdir(root / "opt")
    _mkdir(fx)
    _write(fx / "file", b"hello\n", 0o644)
    os.link(fx / "file", fx / "hardlink")
    os.link(fx / "file", fx / "hl2")
    _write(fx / "suid", b"\x7fELF fake", 0o4755, 1234, 5678)
    os.setxattr(fx / "suid", "security.capability", CAPABILITY)
    os.setxattr(fx / "suid", "user.comment", b"suid file")
    _mkdir(fx / "sgid-dir", 0o2750, 1001, 1002)
    _mkdir(fx / "sticky", 0o1777)
    (fx / "abs-link").symlink_to("/opt/fx/file")
    (fx / "rel-link").symlink_to("file")
    (fx / "dangling").symlink_to("/nonexistent/target")
    _write(fx / "willbefile", b"now a file", 0o600, 7, 8)
    _write(fx / "sgid-file", b"g", 0o2755, 0, 50)
    _mkdir(fx / "xattr-dir")
    os.setxattr(fx / "xattr-dir", "user.dirattr", b"d")
    _mkdir(root / "opt" / "opq")
    _write(root / "opt" / "opq" / "kept-same-layer", b"k", 0o644)
    _write(root / "opt" / "opq" / "new", b"new", 0o644)
    _mkdir(root / "srv")
    _mkdir(root / "srv" / "data", 0o700, 1500, 1500)
    _mkdir(root / "usr" / "lib")
    _write(root / "usr" / "lib" / "libfoo.so", b"\x7fELF lib", 0o755)
    (root / "lib").symlink_to("usr/lib")
    _write(root / "etc" / "motd", b"welcome\n", 0o644)
    _write(root / "home" / "app" / ".profile", b"export A=1\n", 0o644, 1000, 1000)
    _mkdir(root / "dev" / "pts")
    _mkdir(root / "dev" / "shm", 0o1777)
    return root
