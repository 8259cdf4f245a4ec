"""The host side of the agent's wire format (pure: bytes in, frames out; no sockets).

``frame = b"AM" | u8 type | u8 flags(0) | u32 id | u32 length | payload`` (little endian);
``payload = (u8 tag | u32 length | bytes)*`` except STDOUT/STDERR/STDIN frames, whose payload is raw data.
Must match ``src/amber/guest/agent.c``.
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
    OK = 64
    ERROR = 65
    STARTED = 66
    STDOUT = 67
    STDERR = 68
    EXIT = 69


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


class SyncMode(IntEnum):
    SYNC = 0
    FREEZE = 1
    THAW = 2


WRITE_MKDIRS = 1

RAW_PAYLOAD = frozenset({MsgType.STDOUT, MsgType.STDERR, MsgType.STDIN})


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


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes, iterate complete frames. Raises ``ProtocolError`` on garbage."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buf += data
        while len(self._buf) >= HEADER.size:
            magic, type_, flags, id_, n = HEADER.unpack_from(self._buf)
            if magic != MAGIC or flags != 0:
                raise ProtocolError(f"bad frame header {bytes(self._buf[: HEADER.size]).hex()}")
            if n > MAX_PAYLOAD + (1 << 20):
                raise ProtocolError(f"frame of {n} bytes is larger than any the agent sends")
            if len(self._buf) < HEADER.size + n:
                return
            payload = bytes(self._buf[HEADER.size : HEADER.size + n])
            del self._buf[: HEADER.size + n]
            fields = [] if type_ in RAW_PAYLOAD else decode_fields(payload)
            yield Frame(type_, id_, payload, fields)
