"""Minimal protobuf wire-format encoding and decoding for the few BuildKit messages Amber exchanges.

Hand-written because the messages are one to three scalar fields each (BytesMessage, GetSecretRequest,
CredentialsRequest, StatusResponse's vertex/log entries); generated code would need protoc and BuildKit's
.proto tree, neither of which is available offline, for less than a hundred lines of logic.
Guarantees: ``decode`` accepts every wire type (unknown fields are kept or skipped, never misread) and raises
``ValueError`` on truncated input. Limits: no groups (wire types 3/4, deprecated), no packed-field helpers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 negatives are ten-byte varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def encode_bytes(field_number: int, value: bytes) -> bytes:
    """One length-delimited field (bytes, string or embedded message)."""
    return encode_varint(field_number << 3 | LENGTH_DELIMITED) + encode_varint(len(value)) + value


def encode_string(field_number: int, value: str) -> bytes:
    return encode_bytes(field_number, value.encode())


def single_bytes_field(data: bytes, field_number: int) -> bytes | memoryview:
    """Fast path for messages that are exactly one length-delimited field (``BytesMessage``, ~10k per 200 MB
    export): a view of the payload without copying; anything else goes through ``decode``."""
    if data and data[0] == (field_number << 3 | LENGTH_DELIMITED):
        length, start = _read_varint(data, 1)
        if start + length == len(data):
            return memoryview(data)[start:]
    return decode(data).bytes_(field_number)


@dataclass
class Fields:
    """A decoded message: field number → values in wire order (ints for varint/fixed, bytes otherwise)."""

    values: dict[int, list[int | bytes]] = field(default_factory=lambda: defaultdict(list))

    def bytes_(self, number: int) -> bytes:
        for value in self.values.get(number, []):
            if isinstance(value, bytes):
                return value
        return b""

    def string(self, number: int) -> str:
        return self.bytes_(number).decode(errors="replace")

    def int_(self, number: int) -> int:
        for value in self.values.get(number, []):
            if isinstance(value, int):
                return value
        return 0

    def messages(self, number: int) -> list[Fields]:
        return [decode(v) for v in self.values.get(number, []) if isinstance(v, bytes)]

    def message(self, number: int) -> Fields | None:
        found = self.messages(number)
        return found[0] if found else None

    def has(self, number: int) -> bool:
        return bool(self.values.get(number))


def decode(data: bytes) -> Fields:
    """Decode one message into its raw fields."""
    fields = Fields()
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == LENGTH_DELIMITED:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated length-delimited field")
            value, pos = data[pos : pos + length], pos + length
        elif wire_type == FIXED64:
            if pos + 8 > len(data):
                raise ValueError("truncated fixed64 field")
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire_type == FIXED32:
            if pos + 4 > len(data):
                raise ValueError("truncated fixed32 field")
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        fields.values[number].append(value)
    return fields
