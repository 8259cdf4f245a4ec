"""A sequential tar reader for layer streams (ustar, GNU long names, PAX headers incl. xattrs).

Hand-written because ``tarfile``'s stream mode re-slices its whole read buffer on every small read and
decodes every header field, which made it the slowest part of unpacking. Headers are checked (checksum,
signed or unsigned), numbers may be octal or GNU base-256, the ustar ``prefix`` is used only in POSIX ustar
headers. Reads the stream strictly forward, never seeks, and holds at most one member's PAX/long-name data
(bounded) in memory; file contents are streamed by the caller.
"""

from __future__ import annotations

import base64
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import unquote

BLOCK = 512
_MAX_META = 16 * 1024 * 1024  # a PAX or long-name record larger than this is not a real layer
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


class TarFormatError(ValueError):
    """The stream is not a tar archive we can read (message says where)."""


_USTAR_MAGIC = b"ustar\x00"
_GNU_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.GNUTYPE_SPARSE)


def _number(field: bytes) -> int:
    if field[0] in (0o200, 0o377):  # GNU base-256, big-endian; 0o377 marks a negative number
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits or b"0", 8)
    except ValueError:
        raise TarFormatError(f"invalid number {digits!r} in a tar header") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode(_ENCODING, _ERRORS)


@dataclass(frozen=True)
class _Header:
    name: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    type: bytes
    linkname: str
    devmajor: int
    devminor: int


def _parse_header(block: bytes) -> _Header:
    stored = _number(block[148:156])
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    if stored != unsigned:
        # Some old tars summed signed bytes.
        signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b >= 0x80)
        if stored != signed:
            raise TarFormatError("tar header checksum mismatch")
    kind = block[156:157]
    name = _text(block[0:100])
    if block[257:263] == _USTAR_MAGIC and kind not in _GNU_TYPES:
        prefix = _text(block[345:500])
        if prefix:
            name = prefix + "/" + name
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE  # old V7 directories
    return _Header(
        name, _number(block[100:108]), _number(block[108:116]), _number(block[116:124]), _number(block[124:136]),
        _number(block[136:148]), kind, _text(block[157:257]), _number(block[329:337]), _number(block[337:345]),
    )


@dataclass
class TarMember:
    """One archive member with PAX/GNU extensions applied. ``type`` is a ``tarfile`` type byte."""

    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    linkname: str
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


class TarReader:
    """Iterate members of an uncompressed tar stream; read each regular member's data before moving on."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._remaining = 0  # unread data bytes of the current member
        self._padding = 0
        self._global: dict[str, str] = {}

    def _read_exact(self, size: int, what: str) -> bytes:
        data = self._stream.read(size)
        if len(data) != size:
            raise TarFormatError(f"unexpected end of archive while reading {what}")
        return data

    def _skip_rest(self) -> None:
        left = self._remaining + self._padding
        while left:
            chunk = self._stream.read(min(left, 1024 * 1024))
            if not chunk:
                raise TarFormatError("unexpected end of archive inside a member")
            left -= len(chunk)
        self._remaining = self._padding = 0

    def read_chunks(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """The current member's data, in chunks, then its padding is skipped."""
        while self._remaining:
            chunk = self._stream.read(min(self._remaining, chunk_size))
            if not chunk:
                raise TarFormatError("unexpected end of archive inside file data")
            self._remaining -= len(chunk)
            yield chunk
        self._skip_rest()

    def _meta(self, info: _Header) -> bytes:
        if info.size > _MAX_META:
            raise TarFormatError(f"extended header of {info.size} bytes is too large")
        data = self._read_exact(info.size, "an extended header")
        pad = -info.size % BLOCK
        if pad:
            self._read_exact(pad, "header padding")
        return data

    @staticmethod
    def _pax_records(data: bytes) -> dict[str, str]:
        records: dict[str, str] = {}
        pos = 0
        while pos < len(data):
            space = data.find(b" ", pos)
            if space < 0:
                break
            try:
                length = int(data[pos:space])
            except ValueError:
                raise TarFormatError("malformed PAX record length") from None
            if length <= 0 or pos + length > len(data):
                raise TarFormatError("malformed PAX record")
            record = data[space + 1 : pos + length - 1]  # drop the trailing newline
            key, _, value = record.partition(b"=")
            records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
            pos += length
        return records

    def __iter__(self) -> Iterator[TarMember]:
        return self

    def __next__(self) -> TarMember:
        self._skip_rest()
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            header = self._stream.read(BLOCK)
            if not header or header.count(0) == BLOCK:
                raise StopIteration  # end-of-archive blocks (or a stream without them)
            if len(header) != BLOCK:
                raise TarFormatError("truncated tar header")
            info = _parse_header(header)
            if info.type == tarfile.XHDTYPE:
                pax.update(self._pax_records(self._meta(info)))
            elif info.type == tarfile.XGLTYPE:
                self._global.update(self._pax_records(self._meta(info)))
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = self._meta(info).rstrip(b"\0").decode(_ENCODING, _ERRORS)
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                long_link = self._meta(info).rstrip(b"\0").decode(_ENCODING, _ERRORS)
            else:
                break
        records = {**self._global, **pax}
        name = records.get("path", long_name if long_name is not None else info.name)
        linkname = records.get("linkpath", long_link if long_link is not None else info.linkname)
        try:
            size = int(records["size"]) if "size" in records else info.size
            uid = int(records["uid"]) if "uid" in records else info.uid
            gid = int(records["gid"]) if "gid" in records else info.gid
            mtime = float(records["mtime"]) if "mtime" in records else float(info.mtime)
        except ValueError:
            raise TarFormatError(f"malformed PAX number in the header of {name!r}") from None
        if info.type == tarfile.GNUTYPE_SPARSE or "GNU.sparse.major" in records or "GNU.sparse.size" in records:
            raise TarFormatError(f"entry {name!r} is a GNU sparse file, which layers must not use")
        xattrs: dict[str, bytes] = {}
        for key, value in records.items():
            if key.startswith("SCHILY.xattr."):
                xattrs[key[len("SCHILY.xattr."):]] = value.encode(_ENCODING, _ERRORS)
            elif key.startswith("LIBARCHIVE.xattr."):  # bsdtar: URL-encoded name, base64 value
                raw = value.encode(_ENCODING, _ERRORS)
                try:
                    xattrs[unquote(key[len("LIBARCHIVE.xattr."):])] = base64.b64decode(raw + b"=" * (-len(raw) % 4))
                except ValueError:
                    raise TarFormatError(f"malformed LIBARCHIVE.xattr record in the header of {name!r}") from None
        if "\0" in name or "\0" in linkname or any("\0" in key for key in xattrs):
            raise TarFormatError(f"entry {name!r} has a NUL byte in its name, link target or an xattr name")
        member = TarMember(name, info.type, info.mode, uid, gid, size, mtime, linkname, info.devmajor,
                           info.devminor, xattrs)
        # Only regular files carry data; a hard link's or directory's size field is ignored like GNU tar does.
        self._remaining = size if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) else 0
        self._padding = -self._remaining % BLOCK
        return member
