"""The host side of the agent's wire format (pure: bytes in, frames out; no sockets).

``frame = b"AM" | u8 type | u8 flags(0) | u32 id | u32 length | payload`` (little endian);
``payload = (u8 tag | u32 length | bytes)*`` except STDOUT/STDERR/STDIN frames, whose payload is raw data.
Integers are u32 (u64 for OFFSET, SIZE, CLOCK_NS, MTIME_NS, INO); a flag is an empty field. Replies carry
their request's id. Must match ``src/amber/guest/agent.c`` (its header comment lists every request).

Requests and answers, in short (``→`` reply frames to the same id):

- ``PING`` → ``OK {VERSION}``; ``SYNC {FLAGS}`` → ``OK``; ``POST_RESTORE {CLOCK_NS, ENTROPY, BOOT_ID,
  HOSTNAME}`` → ``OK`` (also resets every job's output window).
- ``EXEC {ARGV*|SHELL|PORT, ENV*, CWD, USER, STDIN, STDIN_OPEN, TIMEOUT_MS, WINDOW}`` → ``STARTED {PID}``,
  ``STDOUT``/``STDERR`` (raw), ``STDIN_ACK {LENGTH}``, ``EXIT {EXIT_CODE|SIGNAL, TIMED_OUT}`` — or ``ERROR``.
  ``PORT`` relays stdin/stdout to ``127.0.0.1:PORT`` (then ``::1``) in the guest.
- ``STDIN`` (raw; empty = EOF), ``SIGNAL {SIGNAL}``, ``ACK {LENGTH, FLAGS}`` (output consumed, for
  ``WINDOW``): no answer unless malformed. ``ATTACH`` → ``OK {PID, STDIN_OPEN, WINDOW}`` or ``ERROR`` (ENOENT).
- ``SET_ENV {ENV*}`` → ``OK`` (replaces the agent's base environment).
- Files (each with an optional ``USER``): ``WRITE_FILE {PATH, DATA, MODE, OWNER, OFFSET, FLAGS}``,
  ``READ_FILE {PATH, OFFSET, LENGTH}`` → ``OK {SIZE, MODE, UID, GID, INO, MTIME_NS, DATA}``,
  ``STAT {PATH}`` → ``OK {entry}``, ``LIST_DIR {PATH, DEPTH, MAX_ENTRIES}`` → ``ENTRIES {ENTRY*}``… then
  ``OK {COUNT}``, ``MKDIR {PATH, MODE, OWNER, FLAGS}`` → ``OK {STATUS}``, ``REMOVE {PATH, FLAGS}``,
  ``RENAME {PATH, NEW_PATH, FLAGS}``, ``CHMOD {PATH, MODE}`` → ``OK``. An entry is nested fields
  ``PATH FTYPE SIZE MODE UID GID UNAME GNAME MTIME_NS TARGET``.
- ``ERROR {MESSAGE, ERRNO}`` answers any request that failed.

``FrameDecoder`` resynchronises at the start of a connection: a restored guest may first send the tail of a
frame whose head went to the previous connection; those bytes are skipped (and counted) up to the first
header that is valid.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum

MAGIC = b"AM"
HEADER = struct.Struct("<2sBBII")
MAX_PAYLOAD = 4 << 20  # the agent rejects larger frames
CHUNK = 1 << 20  # file and stdin transfers are split into chunks of this size


class MsgType(IntEnum):
    PING = 1
    EXEC = 2
    STDIN = 3
    SIGNAL = 4
    WRITE_FILE = 5
    READ_FILE = 6
    TCP_PROBE = 7
    HTTP_PROBE = 8
    SYNC = 9
    POST_RESTORE = 10
    SET_ENV = 11
    STAT = 12
    LIST_DIR = 13
    MKDIR = 14
    REMOVE = 15
    RENAME = 16
    CHMOD = 17
    ATTACH = 18
    ACK = 19
    OK = 64
    ERROR = 65
    STARTED = 66
    STDOUT = 67
    STDERR = 68
    EXIT = 69
    ENTRIES = 70
    STDIN_ACK = 71


class Tag(IntEnum):
    ARGV = 1
    SHELL = 2
    ENV = 3
    CWD = 4
    USER = 5
    STDIN = 6
    STDIN_OPEN = 7
    TIMEOUT_MS = 8
    PATH = 9
    DATA = 10
    MODE = 11
    OWNER = 12
    OFFSET = 13
    LENGTH = 14
    PORT = 15
    HOST = 16
    FLAGS = 17
    CLOCK_NS = 18
    ENTROPY = 19
    BOOT_ID = 20
    MESSAGE = 21
    ERRNO = 22
    PID = 23
    EXIT_CODE = 24
    SIGNAL = 25
    TIMED_OUT = 26
    STATUS = 27
    SIZE = 28
    UID = 29
    GID = 30
    VERSION = 31
    HOSTNAME = 32
    NEW_PATH = 33
    FTYPE = 34
    UNAME = 35
    GNAME = 36
    MTIME_NS = 37
    TARGET = 38
    ENTRY = 39
    DEPTH = 40
    MAX_ENTRIES = 41
    COUNT = 42
    INO = 43
    WINDOW = 44


class SyncMode(IntEnum):
    SYNC = 0
    FREEZE = 1
    THAW = 2


class WireFileType(IntEnum):
    """``FTYPE`` of a STAT answer or LIST_DIR entry."""

    FILE = 1
    DIR = 2
    SYMLINK = 3
    OTHER = 4


WRITE_MKDIRS = 1  # FLAGS of WRITE_FILE
MKDIR_PARENTS = 1  # FLAGS of MKDIR
REMOVE_RECURSIVE = 1  # FLAGS of REMOVE
RENAME_NO_REPLACE = 1  # FLAGS of RENAME
ACK_RESET = 1  # FLAGS of ACK
MAX_LIST_ENTRIES = 100_000  # the agent refuses LIST_DIR with a larger max_entries

RAW_PAYLOAD = frozenset({MsgType.STDOUT, MsgType.STDERR, MsgType.STDIN})
REPLY_TYPES = frozenset(t for t in MsgType if t >= MsgType.OK)  # what the agent sends
MAX_REPLY = MAX_PAYLOAD + (1 << 20)  # no agent frame is larger (a READ_FILE answer: 1 MiB + fields)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame."""


FieldValue = bytes | str | int | bool


@dataclass(frozen=True)
class Frame:
    type: int
    id: int
    payload: bytes
    fields: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, tag: Tag) -> bytes | None:
        return next((v for t, v in self.fields if t == tag), None)

    def u32(self, tag: Tag) -> int | None:
        v = self.get(tag)
        if v is None:
            return None
        if len(v) != 4:
            raise ProtocolError(f"field {tag.name} has {len(v)} bytes, expected 4")
        return int.from_bytes(v, "little")

    def u64(self, tag: Tag) -> int | None:
        v = self.get(tag)
        if v is None:
            return None
        if len(v) != 8:
            raise ProtocolError(f"field {tag.name} has {len(v)} bytes, expected 8")
        return int.from_bytes(v, "little")

    def text(self, tag: Tag) -> str | None:
        v = self.get(tag)
        return None if v is None else v.decode("utf-8", "replace")

    def has(self, tag: Tag) -> bool:
        return any(t == tag for t, _ in self.fields)


def encode_field(tag: int, value: FieldValue, *, wide: bool = False) -> bytes:
    """One TLV field: ``bytes``/``str`` as is, ``int`` as u32 (u64 when ``wide``), ``True`` as an empty flag."""
    if isinstance(value, bool):
        data = b""
    elif isinstance(value, int):
        data = value.to_bytes(8 if wide else 4, "little")
    elif isinstance(value, str):
        data = value.encode()
    else:
        data = value
    return struct.pack("<BI", tag, len(data)) + data


def encode_frame(type_: int, id_: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, type_, 0, id_, len(payload)) + payload


def encode_request(type_: int, id_: int, fields: Iterable[bytes]) -> bytes:
    return encode_frame(type_, id_, b"".join(fields))


def decode_fields(payload: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    off = 0
    while off < len(payload):
        if len(payload) - off < 5:
            raise ProtocolError("truncated field header")
        tag, n = struct.unpack_from("<BI", payload, off)
        if n > len(payload) - off - 5:
            raise ProtocolError(f"field {tag} runs past the end of the frame")
        out.append((tag, payload[off + 5 : off + 5 + n]))
        off += 5 + n
    return out


def decode_entry(value: bytes) -> Frame:
    """A nested ``ENTRY`` field (LIST_DIR) as a field-only frame, so ``u32``/``text``/… apply to it."""
    return Frame(0, 0, value, decode_fields(value))


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, iterate complete frames.

    With ``resync`` (what ``AgentClient`` uses for every connection) leading bytes that do not start a
    valid agent frame — magic, flags 0, a reply type, a plausible length and, for field frames, fields that
    parse — are skipped and counted in ``skipped``; from the first valid frame on, garbage raises
    ``ProtocolError``. Without it garbage raises at once.
    """

    def __init__(self, *, resync: bool = False) -> None:
        self._buf = bytearray()
        self._resyncing = resync
        self.skipped = 0  # bytes dropped while resynchronising

    def _valid_at(self, off: int) -> bool | None:
        """Whether a valid frame starts at ``off``; None when more bytes are needed to tell."""
        if len(self._buf) - off < HEADER.size:
            return None
        magic, type_, flags, _id, n = HEADER.unpack_from(self._buf, off)
        if magic != MAGIC or flags != 0 or type_ not in REPLY_TYPES or n > MAX_REPLY:
            return False
        if type_ in RAW_PAYLOAD:
            return True
        if len(self._buf) - off < HEADER.size + n:
            return None
        try:
            decode_fields(bytes(self._buf[off + HEADER.size : off + HEADER.size + n]))
        except ProtocolError:
            return False
        return True

    def _resync(self) -> bool:
        """Drop bytes up to the first valid frame; False while undecided (wait for more input)."""
        off = 0
        while True:
            found = self._buf.find(MAGIC, off)
            if found < 0:
                drop = max(0, len(self._buf) - (len(MAGIC) - 1))  # a magic may straddle the next feed
                self.skipped += drop
                del self._buf[:drop]
                return False
            valid = self._valid_at(found)
            if valid is False:
                off = found + 1
                continue
            self.skipped += found
            del self._buf[:found]
            if valid is None:
                return False
            self._resyncing = False
            return True

    def feed(self, data: bytes | memoryview) -> Iterator[Frame]:
        self._buf += data
        if self._resyncing and not self._resync():
            return
        while len(self._buf) >= HEADER.size:
            magic, type_, flags, id_, n = HEADER.unpack_from(self._buf)
            if magic != MAGIC or flags != 0:
                raise ProtocolError(f"bad frame header {bytes(self._buf[: HEADER.size]).hex()}")
            if n > MAX_REPLY:
                raise ProtocolError(f"frame of {n} bytes is larger than any the agent sends")
            if len(self._buf) < HEADER.size + n:
                return
            with memoryview(self._buf) as view:  # one copy out of the buffer, not two
                payload = bytes(view[HEADER.size : HEADER.size + n])
            del self._buf[: HEADER.size + n]
            fields = [] if type_ in RAW_PAYLOAD else decode_fields(payload)
            yield Frame(type_, id_, payload, fields)
