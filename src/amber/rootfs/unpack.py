"""Unpack layer tars into a root tree with OCI semantics, refusing anything that could escape the tree.

Semantics: entries are applied in order; ``.wh.<name>`` deletes ``<name>`` from lower layers;
``.wh..wh..opq`` empties its directory of lower-layer content (entries of the same layer stay); regular
files, directories, symlinks and hard links are created with the entry's numeric uid/gid, full mode
(set-id and sticky bits kept: chmod runs after chown), mtime and PAX xattrs (``SCHILY.xattr.*``,
``LIBARCHIVE.xattr.*``; set after chown, which would clear ``security.capability``). An existing directory is
merged when the entry is a directory and replaced otherwise; every other existing entry is replaced, never
followed. Directory mtimes are applied after the last layer. Tars are read by ``rootfs.tarstream``;
compressed layers are inflated in a helper thread (gzip by ISA-L when installed).

Safety (hand-written because ``tarfile``'s extraction filters drop set-id bits and refuse absolute
symlinks, both normal in root filesystems):
- names are resolved inside the target as a chroot would (``rootfs.paths``): a symlinked parent, even
  ``/``-absolute or ``../..``, resolves within the tree; a leading ``/`` is dropped like GNU tar does;
- a name or hard-link target whose ``..`` climbs above the root → :class:`UnsafeLayerError`;
- symlink *targets* are stored verbatim (they are data; only our own walks interpret them, in-root);
- sockets, FIFOs, block and character devices → :class:`UnsupportedEntryError` (R34).
Errors name the entry and the layer. On error the target is left partially written: callers unpack into a
staging directory they delete on failure (``import_image`` does).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import queue
import shutil
import stat
import tarfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

import zstandard

from amber.oci.errors import (
    ImageImportError,
    LayerRejectedError,
    UnsafeLayerError,
    UnsupportedEntryError,
    UnsupportedMediaTypeError,
)
from amber.oci.media_types import Compression
from amber.rootfs.paths import PathEscapeError, host_path, resolve_in_root, split_relative
from amber.rootfs.tarstream import TarFormatError, TarMember, TarReader

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_BUFFER = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SPECIAL_TYPES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
}
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


class LayerLike(Protocol):
    """What :func:`unpack_layers` needs of a layer (``amber.oci.pull.LayerFile`` is one)."""

    @property
    def path(self) -> Path: ...

    @property
    def compression(self) -> Compression: ...

    @property
    def digest(self) -> str: ...


@dataclass
class UnpackStats:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    whiteouts: int = 0
    # Estimated memory/disk the tree takes (file pages + ~1 KiB per entry), and an optional cap on it.
    allocated: int = 0
    allocation_limit: int | None = None
    dir_mtimes: dict[str, int] = field(default_factory=dict)  # applied last: children change a dir's mtime
    # Host paths known to be real directories: saves lstat calls; cleared whenever a directory is removed.
    known_dirs: set[str] = field(default_factory=set, repr=False)
    # Set from another thread to stop unpacking at the next entry or chunk (cancelled builds).
    stop: threading.Event = field(default_factory=threading.Event, repr=False)


class StagingFullError(ImageImportError):
    """The tree outgrew ``UnpackStats.allocation_limit`` (e.g. the tmpfs budget of a staging area)."""


_PAGE = 4096
_ENTRY_OVERHEAD = 1024


def _check_magic(head: bytes, compression: Compression, layer: str) -> None:
    detected = (
        Compression.GZIP if head.startswith(_GZIP_MAGIC)
        else Compression.ZSTD if head.startswith(_ZSTD_MAGIC)
        else Compression.NONE
    )
    if detected is not compression:
        raise UnsupportedMediaTypeError(
            f"layer {layer}: media type declares {compression.value} compression but the content is "
            f"{'uncompressed' if detected is Compression.NONE else detected.value}"
        )


def _gzip_reader(raw: IO[bytes]) -> IO[bytes]:
    """ISA-L's gzip reader when installed (inflates ~3x faster than zlib), else the standard library's."""
    try:
        from isal import igzip
    except ImportError:
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    return cast(IO[bytes], igzip.IGzipFile(fileobj=raw, mode="rb"))  # type: ignore[no-untyped-call]


class _PrefetchReader(io.RawIOBase):
    """Decompress in a worker thread, one chunk ahead of the reader (zlib and zstd release the GIL).

    At most ``depth`` chunks of ``_BUFFER`` bytes are buffered; errors of the worker surface on read.
    """

    def __init__(self, source: IO[bytes], depth: int = 4) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._pending = memoryview(b"")
        self._eof = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), name="layer-decompress", daemon=True)
        self._thread.start()

    def _run(self, source: IO[bytes]) -> None:
        try:
            while not self._stop.is_set():
                chunk = source.read(_BUFFER)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # handed to the reading thread, which raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._eof:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                self._eof = True
            self._pending = memoryview(item)
        count = min(len(view), len(self._pending))
        view[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        super().close()


@contextlib.contextmanager
def open_layer(path: Path, compression: Compression, *, layer: str | None = None) -> Iterator[IO[bytes]]:
    """The uncompressed tar stream of a layer blob; the compression is checked against the file's magic.

    Compressed layers are decompressed in a helper thread (joined on exit) so inflating overlaps with
    writing files.
    """
    name = layer or path.name
    with path.open("rb") as raw:
        _check_magic(raw.read(4), compression, name)
        raw.seek(0)
        if compression is Compression.NONE:
            yield raw
            return
        source: IO[bytes]
        if compression is Compression.GZIP:
            source = _gzip_reader(raw)
        else:
            source = zstandard.ZstdDecompressor().stream_reader(raw, read_size=_BUFFER, read_across_frames=True)
        with source, io.BufferedReader(_PrefetchReader(source), _BUFFER) as stream:
            yield cast(IO[bytes], stream)


class _LayerUnpacker:
    def __init__(self, target: Path, layer: str, stats: UnpackStats) -> None:
        self.root = os.fspath(target).rstrip("/") or "/"
        self.layer = layer
        self.stats = stats
        self.written: set[str] = set()  # resolved paths this layer created (kept by its own opaque whiteouts)

    # -- helpers -------------------------------------------------------------------------------------------
    def _reject(self, cls: type[LayerRejectedError], name: str, why: str) -> LayerRejectedError:
        return cls(f"layer {self.layer}: entry {name!r} {why}", entry=name, layer=self.layer)

    def _parts(self, name: str, what: str = "escapes the target directory with '..'", *, entry: str | None = None
               ) -> list[str]:
        try:
            return split_relative(name)
        except PathEscapeError:
            raise self._reject(UnsafeLayerError, entry or name, what) from None

    def _resolve_parent(self, name: str, parts: list[str]) -> list[str]:
        """Resolve the parent in-root and create missing directories (0755, root-owned, like Docker)."""
        known = self.stats.known_dirs
        try:
            parent = resolve_in_root(self.root, parts[:-1], follow_last=True, known_dirs=known)
        except PathEscapeError as exc:
            raise self._reject(UnsafeLayerError, name, f"cannot be resolved: {exc}") from None
        current = self.root
        for part in parent:
            current = current + "/" + part
            if current in known:
                continue
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                os.mkdir(current, 0o755)
                known.add(current)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise self._reject(LayerRejectedError, name, f"has a parent {part!r} that is not a directory")
            known.add(current)
        return parent

    def _remove(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):  # nothing there (a parent may be a file)
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
            self.stats.known_dirs.clear()  # rare (whiteouts, replacements): forget rather than prune
        else:
            os.unlink(path)

    def _metadata(self, path: str, info: TarMember, *, symlink: bool = False) -> None:
        os.chown(path, info.uid, info.gid, follow_symlinks=False)
        if not symlink:
            os.chmod(path, stat.S_IMODE(info.mode))
        self._xattrs(path, info, symlink=symlink)

    def _xattrs(self, path: str, info: TarMember, *, symlink: bool) -> None:
        for attr, raw in info.xattrs.items():
            try:
                os.setxattr(path, attr, raw, follow_symlinks=False)
            except OSError as exc:
                # Linux forbids user.* xattrs on symlinks; every tool drops those silently.
                if symlink and exc.errno in (errno.EPERM, errno.ENOTSUP):
                    continue
                raise self._reject(
                    LayerRejectedError, info.name, f"xattr {attr!r} cannot be set: {exc.strerror}"
                ) from None

    # -- entries -------------------------------------------------------------------------------------------
    def apply(self, tar: TarReader, info: TarMember) -> None:
        name = info.name
        if self.stats.stop.is_set():
            raise ImageImportError(f"unpacking layer {self.layer} was cancelled")
        self.stats.entries += 1
        self.stats.allocated += _ENTRY_OVERHEAD
        if info.type in _SPECIAL_TYPES:
            raise self._reject(UnsupportedEntryError, name, f"is a {_SPECIAL_TYPES[info.type]}, which images may not "
                               "contain (only files, directories, symlinks and hard links)")
        if stat.S_IFMT(info.mode) == stat.S_IFSOCK:
            raise self._reject(UnsupportedEntryError, name, "is a socket, which images may not contain")
        if info.type not in (*_REGULAR_TYPES, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE):
            raise self._reject(UnsupportedEntryError, name, f"has unsupported tar type {info.type!r}")
        parts = self._parts(name)
        if not parts:
            if info.type == tarfile.DIRTYPE:  # "./": the root directory's own metadata
                self._metadata(self.root, info)
                self.stats.dir_mtimes[self.root] = int(info.mtime)
                return
            raise self._reject(UnsafeLayerError, name, "names the target directory itself")
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            try:
                self._whiteout(name, parts)
            except OSError as exc:
                raise self._reject(LayerRejectedError, name, f"cannot be applied: {exc.strerror or exc}") from None
            return
        parent = self._resolve_parent(name, parts)
        dest_parts = [*parent, base]
        dest = host_path(self.root, dest_parts)
        key = "/".join(dest_parts)
        try:
            if info.type == tarfile.DIRTYPE:
                self._directory(dest, info)
            elif info.type in _REGULAR_TYPES:
                self._file(tar, dest, info)
            elif info.type == tarfile.SYMTYPE:
                self._remove(dest)
                os.symlink(info.linkname, dest)
                self._metadata(dest, info, symlink=True)
                os.utime(dest, ns=(int(info.mtime * 1e9),) * 2, follow_symlinks=False)
            else:
                self._hardlink(dest, info)
        except LayerRejectedError:
            raise
        except OSError as exc:
            raise self._reject(LayerRejectedError, name, f"cannot be written: {exc.strerror or exc}") from None
        self.written.add(key)

    def _directory(self, dest: str, info: TarMember) -> None:
        try:
            st = os.lstat(dest)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(dest)
                os.mkdir(dest, 0o700)
        except FileNotFoundError:
            os.mkdir(dest, 0o700)
        self._metadata(dest, info)
        self.stats.dir_mtimes[dest] = int(info.mtime)
        self.stats.known_dirs.add(dest)

    def _file(self, tar: TarReader, dest: str, info: TarMember) -> None:
        self._remove(dest)
        limit = self.stats.allocation_limit
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "wb", buffering=0) as out:
            written = 0
            for chunk in tar.read_chunks(_BUFFER):
                written += len(chunk)
                if self.stats.stop.is_set():
                    raise ImageImportError(f"unpacking layer {self.layer} was cancelled")
                if limit is not None and self.stats.allocated + written > limit:
                    raise StagingFullError(
                        f"layer {self.layer}: the unpacked tree outgrew its staging budget of {limit} bytes"
                    )
                out.write(chunk)
            self.stats.allocated += -(-written // _PAGE) * _PAGE
            os.fchown(fd, info.uid, info.gid)
            os.fchmod(fd, stat.S_IMODE(info.mode))
            self._xattrs(dest, info, symlink=False)
            os.utime(fd, ns=(int(info.mtime * 1e9),) * 2)
        self.stats.files += 1
        self.stats.bytes += info.size

    def _hardlink(self, dest: str, info: TarMember) -> None:
        target = self._parts(
            info.linkname, f"is a hard link to {info.linkname!r}, outside the target directory", entry=info.name
        )
        if not target:
            raise self._reject(UnsafeLayerError, info.name, "is a hard link to the target directory itself")
        try:
            parent = resolve_in_root(self.root, target[:-1], follow_last=True, known_dirs=self.stats.known_dirs)
            source_parts = [*parent, target[-1]]
        except PathEscapeError as exc:
            raise self._reject(UnsafeLayerError, info.name, f"has an unresolvable link target: {exc}") from None
        source = host_path(self.root, source_parts)
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            raise self._reject(
                LayerRejectedError, info.name, f"is a hard link to {info.linkname!r}, which does not exist"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise self._reject(LayerRejectedError, info.name, f"is a hard link to directory {info.linkname!r}")
        if source == dest:
            return
        self._remove(dest)
        os.link(source, dest, follow_symlinks=False)

    def _whiteout(self, name: str, parts: list[str]) -> None:
        self.stats.whiteouts += 1
        try:
            parent = resolve_in_root(self.root, parts[:-1], follow_last=True, known_dirs=self.stats.known_dirs)
        except PathEscapeError as exc:
            raise self._reject(UnsafeLayerError, name, f"cannot be resolved: {exc}") from None
        base = parts[-1]
        if base == OPAQUE_WHITEOUT:
            directory = host_path(self.root, parent)
            if os.path.isdir(directory) and not os.path.islink(directory):
                self._opaque(parent)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk, …): not content
        victim_parts = [*parent, base[len(WHITEOUT_PREFIX):]]
        if not victim_parts[-1] or victim_parts[-1] in (".", ".."):
            raise self._reject(UnsafeLayerError, name, "is a whiteout of an invalid name")
        if "/".join(victim_parts) in self.written:
            return  # whiteouts hide lower layers only
        self._remove(host_path(self.root, victim_parts))

    def _opaque(self, directory_parts: list[str]) -> None:
        directory = host_path(self.root, directory_parts)
        for child in os.listdir(directory):
            child_parts = [*directory_parts, child]
            child_path = os.path.join(directory, child)
            if "/".join(child_parts) in self.written:
                if os.path.isdir(child_path) and not os.path.islink(child_path):
                    self._opaque(child_parts)
                continue
            self._remove(child_path)


def unpack_tar_stream(stream: IO[bytes], target: Path, *, layer: str = "tar stream",
                      stats: UnpackStats | None = None) -> UnpackStats:
    """Apply one uncompressed tar stream to ``target`` (created if missing) with the rules above.

    ``layer`` names the stream in error messages (a digest, or e.g. "buildkit output"). Directory mtimes
    are applied before returning. This is the entry point for any tar Amber did not build itself.
    """
    own_stats = stats is None
    stats = stats or UnpackStats()
    target.mkdir(parents=True, exist_ok=True)
    unpacker = _LayerUnpacker(target, layer, stats)
    reader = TarReader(stream)
    try:
        for info in reader:
            unpacker.apply(reader, info)
    except TarFormatError as exc:
        raise ImageImportError(f"layer {layer} is not a valid tar archive: {exc}") from None
    except (EOFError, OSError, zstandard.ZstdError) as exc:
        raise ImageImportError(f"layer {layer} could not be read: {exc}") from None
    if own_stats:
        apply_dir_mtimes(stats)
    return stats


def apply_dir_mtimes(stats: UnpackStats) -> None:
    for path, mtime in stats.dir_mtimes.items():
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.utime(path, (mtime, mtime), follow_symlinks=False)


def unpack_layer(layer: LayerLike, target: Path, stats: UnpackStats) -> None:
    """Apply one layer blob on top of ``target``. Call :func:`apply_dir_mtimes` after the last layer."""
    with open_layer(layer.path, layer.compression, layer=layer.digest) as stream:
        unpack_tar_stream(stream, target, layer=layer.digest, stats=stats)


def unpack_layers(layers: Sequence[LayerLike], target: Path) -> UnpackStats:
    """Unpack ``layers`` (lowest first) into ``target``; returns counts. See the module doc for guarantees."""
    stats = UnpackStats()
    for layer in layers:
        unpack_layer(layer, target, stats)
    apply_dir_mtimes(stats)
    return stats
