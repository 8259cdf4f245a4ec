"""The wire format: host encoder/decoder round trips, and the agent's own decoder fuzzed on the host.

The agent binary runs here as ``amber-agent --serve-stdio``: it decodes every frame exactly as PID 1 does
but refuses to act, so random and hostile frames exercise the real C decoder without touching the host.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amber.vm.protocol import (
    HEADER,
    MAX_PAYLOAD,
    REPLY_TYPES,
    Frame,
    FrameDecoder,
    MsgType,
    ProtocolError,
    Tag,
    decode_entry,
    decode_fields,
    encode_field,
    encode_frame,
    encode_request,
)

REQUEST_TYPES = [t for t in MsgType if t not in REPLY_TYPES and t != MsgType.PING]  # PING is answered OK


def run_agent(agent: Path, data: bytes) -> tuple[int, list[Frame], bytes]:
    done = subprocess.run([str(agent), "--serve-stdio"], input=data, capture_output=True, timeout=30)
    frames = list(FrameDecoder().feed(done.stdout))
    return done.returncode, frames, done.stderr


@pytest.fixture(scope="module")
def agent(guest_data_dir: Path) -> Path:
    return guest_data_dir / "guest" / "amber-agent"


def test_fields_round_trip() -> None:
    payload = b"".join([encode_field(Tag.ARGV, "echo"), encode_field(Tag.ARGV, "héllo"),
                        encode_field(Tag.TIMEOUT_MS, 1500), encode_field(Tag.OFFSET, 2**40, wide=True),
                        encode_field(Tag.STDIN_OPEN, True)])
    frame = next(FrameDecoder().feed(encode_frame(MsgType.EXEC, 5, payload)))
    assert (frame.type, frame.id) == (MsgType.EXEC, 5)
    assert [v for t, v in frame.fields if t == Tag.ARGV] == [b"echo", "héllo".encode()]
    assert frame.u32(Tag.TIMEOUT_MS) == 1500 and frame.u64(Tag.OFFSET) == 2**40 and frame.has(Tag.STDIN_OPEN)


def test_decoder_handles_split_input_and_rejects_garbage() -> None:
    data = encode_frame(MsgType.STDOUT, 1, b"x" * 1000) + encode_frame(MsgType.OK, 2)
    decoder = FrameDecoder()
    frames = [f for i in range(0, len(data), 7) for f in decoder.feed(data[i:i + 7])]
    assert [(f.type, f.id, len(f.payload)) for f in frames] == [(MsgType.STDOUT, 1, 1000), (MsgType.OK, 2, 0)]
    with pytest.raises(ProtocolError):
        list(FrameDecoder().feed(b"XX" + bytes(10)))
    with pytest.raises(ProtocolError):
        decode_fields(b"\x01\xff\x00\x00\x00ab")
    with pytest.raises(ValueError):
        encode_frame(MsgType.EXEC, 1, bytes(MAX_PAYLOAD + 1))


def test_agent_answers_ping_and_refuses_actions_in_host_mode(agent: Path) -> None:
    request = encode_frame(MsgType.PING, 1) + encode_request(MsgType.EXEC, 2, [encode_field(Tag.ARGV, "id")])
    code, frames, _ = run_agent(agent, request)
    assert code == 0
    assert frames[0].type == MsgType.OK and frames[0].text(Tag.VERSION) == "amber-agent 2"
    assert frames[1].type == MsgType.ERROR and "host test mode" in (frames[1].text(Tag.MESSAGE) or "")


def test_agent_rejects_malformed_frames_and_keeps_serving(agent: Path) -> None:
    hostile = [
        b"garbage without any magic",
        HEADER.pack(b"AM", MsgType.EXEC, 0, 3, MAX_PAYLOAD + 1),  # too large
        encode_frame(MsgType.EXEC, 4, b"\x01\xff\xff\xff\xffxx"),  # field overruns the frame
        encode_frame(MsgType.EXEC, 5, encode_field(Tag.ARGV, b"a\x00b")),  # NUL inside a string
        encode_frame(MsgType.EXEC, 6, b""),  # neither argv nor shell
        encode_frame(MsgType.READ_FILE, 7, encode_field(Tag.LENGTH, b"\x01")),  # u32 of one byte
        encode_frame(MsgType.SIGNAL, 8, encode_field(Tag.SIGNAL, 999)),
        encode_frame(99, 9),
    ]
    code, frames, _ = run_agent(agent, b"".join(hostile) + encode_frame(MsgType.PING, 100))
    assert code == 0
    errors = {f.id: f.text(Tag.MESSAGE) for f in frames if f.type == MsgType.ERROR}
    assert "bad frame header" in (errors[0] or "")
    assert "exceeds" in (errors[3] or "")
    for rid in (4, 5, 6, 7, 8, 9):
        assert rid in errors, f"no error reply for request {rid}: {errors}"
    assert frames[-1].type == MsgType.OK and frames[-1].id == 100


def test_decoder_resynchronises_at_the_start_of_a_connection() -> None:
    # What a restored guest may send first: the tail of a frame whose head went to the old connection
    # (here with a fake magic, a header of a non-reply type and a field frame whose fields do not parse),
    # then whole frames.
    tail = b"ut of the old frame AM" + HEADER.pack(b"AM", MsgType.EXEC, 0, 1, 3) + b"abc" + \
        HEADER.pack(b"AM", MsgType.OK, 0, 9, 7) + b"\x01\xff\x00\x00\x00ab"
    frames_in = encode_frame(MsgType.STDOUT, 7, b"AM counter 12\n") + encode_request(
        MsgType.OK, 8, [encode_field(Tag.PID, 42)])
    for step in (1, 5, len(tail) + len(frames_in)):
        decoder = FrameDecoder(resync=True)
        data = tail + frames_in
        got = [f for i in range(0, len(data), step) for f in decoder.feed(data[i:i + step])]
        assert [(f.type, f.id) for f in got] == [(MsgType.STDOUT, 7), (MsgType.OK, 8)]
        assert got[0].payload == b"AM counter 12\n" and got[1].u32(Tag.PID) == 42
        assert decoder.skipped == len(tail)
        # Resynchronising is for the start of a connection only: later garbage is a protocol error.
        with pytest.raises(ProtocolError):
            list(decoder.feed(b"garbage in the middle of a connection"))
    fresh = FrameDecoder(resync=True)  # a clean start skips nothing
    assert [f.id for f in fresh.feed(frames_in)] == [7, 8] and fresh.skipped == 0


def test_nested_entry_fields_decode() -> None:
    entry = b"".join([encode_field(Tag.PATH, "/a/b"), encode_field(Tag.FTYPE, 2),
                      encode_field(Tag.MTIME_NS, 2**63 + 5, wide=True)])
    frame = next(FrameDecoder().feed(encode_request(MsgType.ENTRIES, 3, [encode_field(Tag.ENTRY, entry)] * 2)))
    entries = [decode_entry(v) for t, v in frame.fields if t == Tag.ENTRY]
    assert [(e.text(Tag.PATH), e.u32(Tag.FTYPE), e.u64(Tag.MTIME_NS)) for e in entries] == [("/a/b", 2, 2**63 + 5)] * 2


def test_agent_refuses_every_new_action_in_host_mode(agent: Path) -> None:
    path = encode_field(Tag.PATH, "/etc/passwd")
    requests = {
        10: (MsgType.SET_ENV, [encode_field(Tag.ENV, "A=1")]),
        11: (MsgType.STAT, [path]),
        12: (MsgType.LIST_DIR, [encode_field(Tag.PATH, "/"), encode_field(Tag.DEPTH, 2)]),
        13: (MsgType.MKDIR, [encode_field(Tag.PATH, "/tmp/x"), encode_field(Tag.FLAGS, 1)]),
        14: (MsgType.REMOVE, [encode_field(Tag.PATH, "/tmp/x"), encode_field(Tag.FLAGS, 1)]),
        15: (MsgType.RENAME, [encode_field(Tag.PATH, "/tmp/x"), encode_field(Tag.NEW_PATH, "/tmp/y")]),
        16: (MsgType.CHMOD, [path, encode_field(Tag.MODE, 0o600)]),
        17: (MsgType.EXEC, [encode_field(Tag.PORT, 8080), encode_field(Tag.STDIN_OPEN, True)]),
        18: (MsgType.READ_FILE, [path, encode_field(Tag.USER, "app")]),
        19: (MsgType.WRITE_FILE, [encode_field(Tag.PATH, "/tmp/x"), encode_field(Tag.DATA, b"x"),
                                  encode_field(Tag.USER, "app")]),
    }
    data = b"".join(encode_request(t, rid, f) for rid, (t, f) in requests.items())
    data += encode_request(MsgType.ATTACH, 20, []) + encode_request(MsgType.ACK, 21, [encode_field(Tag.LENGTH, 9)])
    code, frames, _ = run_agent(agent, data + encode_frame(MsgType.PING, 99))
    assert code == 0
    answers = {f.id: f for f in frames}
    for rid in requests:
        assert answers[rid].type == MsgType.ERROR and "host test mode" in (answers[rid].text(Tag.MESSAGE) or ""), rid
        assert answers[rid].u32(Tag.ERRNO) == 1  # EPERM
    assert answers[20].type == MsgType.ERROR and answers[20].u32(Tag.ERRNO) == 2  # ATTACH: no such job
    assert 21 not in answers  # ACK for a job that is gone: silently ignored
    assert answers[99].type == MsgType.OK


def test_agent_validates_new_requests_before_anything_else(agent: Path) -> None:
    bad = {
        30: (MsgType.STAT, [encode_field(Tag.PATH, "relative/path")], "absolute path"),
        31: (MsgType.LIST_DIR, [encode_field(Tag.PATH, "/"), encode_field(Tag.DEPTH, 0)], "depth 1..64"),
        32: (MsgType.LIST_DIR, [encode_field(Tag.PATH, "/"), encode_field(Tag.MAX_ENTRIES, 10**6)], "max_entries"),
        33: (MsgType.REMOVE, [encode_field(Tag.PATH, "//")], "refusing to remove /"),
        34: (MsgType.CHMOD, [encode_field(Tag.PATH, "/x")], "mode"),
        35: (MsgType.MKDIR, [encode_field(Tag.PATH, "/x"), encode_field(Tag.MODE, 0o17777)], "mode <= 07777"),
        36: (MsgType.RENAME, [encode_field(Tag.PATH, "/x")], "two absolute paths"),
        37: (MsgType.SET_ENV, [encode_field(Tag.ENV, "NO_EQUALS_SIGN")], "KEY=value"),
        38: (MsgType.SET_ENV, [encode_field(Tag.ENV, "=value")], "KEY=value"),
        39: (MsgType.EXEC, [encode_field(Tag.PORT, 0)], "1..65535"),
        40: (MsgType.EXEC, [encode_field(Tag.PORT, 80), encode_field(Tag.ARGV, "id")], "exactly one"),
        41: (MsgType.EXEC, [encode_field(Tag.ARGV, "id"), encode_field(Tag.WINDOW, b"\x01")], "malformed"),
        42: (MsgType.ACK, [encode_field(Tag.LENGTH, b"\x01\x02")], "ack: malformed"),
        43: (MsgType.SET_ENV, [encode_field(Tag.ENV, b"A=\x00")], "NUL"),
    }
    data = b"".join(encode_request(t, rid, f) for rid, (t, f, _) in bad.items())
    code, frames, _ = run_agent(agent, data + encode_frame(MsgType.PING, 99))
    assert code == 0
    answers = {f.id: f for f in frames}
    for rid, (_, _, message) in bad.items():
        assert answers[rid].type == MsgType.ERROR, rid
        assert message in (answers[rid].text(Tag.MESSAGE) or ""), (rid, answers[rid].text(Tag.MESSAGE))
        assert answers[rid].u32(Tag.ERRNO) == 22  # EINVAL
    assert answers[99].type == MsgType.OK


def _memory_contains(pid: int, needle: bytes) -> bool:
    """Whether any readable, writable mapping of ``pid`` holds ``needle`` (root reads /proc/pid/mem)."""
    found = False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
            assert m is not None
            start, end, perms = int(m[1], 16), int(m[2], 16), m[3]
            if not perms.startswith("rw"):
                continue
            mem.seek(start)
            try:
                found |= needle in mem.read(end - start)
            except OSError:
                continue
    return found


def test_agent_zeroes_request_data_after_each_frame(agent: Path) -> None:
    # Env values, file data and commands must not linger in the agent's memory once a frame is handled.
    secret = b"s3cret-" + os.urandom(8).hex().encode()
    proc = subprocess.Popen([str(agent), "--serve-stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        requests = [
            encode_request(MsgType.SET_ENV, 1, [encode_field(Tag.ENV, b"TOKEN=" + secret)]),
            encode_request(MsgType.EXEC, 2, [encode_field(Tag.SHELL, b"echo " + secret),
                                             encode_field(Tag.ENV, b"TOKEN=" + secret)]),
            encode_request(MsgType.WRITE_FILE, 3, [encode_field(Tag.PATH, "/tmp/f"),
                                                   encode_field(Tag.DATA, secret * 100)]),
            encode_frame(MsgType.STDIN, 4, secret),
            encode_frame(MsgType.PING, 5),
        ]
        proc.stdin.write(b"".join(requests))
        proc.stdin.flush()
        decoder, got = FrameDecoder(), list[Frame]()
        deadline = time.monotonic() + 30
        while not any(f.id == 5 for f in got):
            assert time.monotonic() < deadline, "no answer to the ping"
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                got += decoder.feed(os.read(proc.stdout.fileno(), 1 << 16))
        assert not _memory_contains(proc.pid, secret), "request data is still in the agent's memory"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


_field = st.tuples(st.integers(0, 255), st.binary(max_size=64))
_frame = st.builds(
    lambda t, i, fields, raw: encode_frame(t, i, raw if raw is not None else b"".join(
        encode_field(tag, value) for tag, value in fields)),
    st.sampled_from([*MsgType, 0, 20, 63, 255]), st.integers(0, 2**32 - 1), st.lists(_field, max_size=6),
    st.one_of(st.none(), st.binary(max_size=200)),
)
# Requests that are well formed enough to reach the new handlers' checks: known tags with plausible values.
_value = st.one_of(st.sampled_from([b"/", b"/tmp/x", b"rel", b"A=1", b"app", b"root:staff"]),
                   st.integers(0, 2**32 - 1).map(lambda v: v.to_bytes(4, "little")),
                   st.integers(0, 2**64 - 1).map(lambda v: v.to_bytes(8, "little")), st.binary(max_size=16))
_request = st.builds(
    lambda t, i, fields: encode_request(t, i, [encode_field(tag, value) for tag, value in fields]),
    st.sampled_from(REQUEST_TYPES), st.integers(0, 2**32 - 1),
    st.lists(st.tuples(st.sampled_from(list(Tag)), _value), max_size=8),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_request, min_size=1, max_size=8))
def test_fuzz_new_request_types_are_refused_or_rejected(agent: Path, frames_in: list[bytes]) -> None:
    code, frames, stderr = run_agent(agent, b"".join(frames_in) + encode_frame(MsgType.PING, 0xABCDEF))
    assert code == 0, f"agent crashed ({code}): {stderr!r}"
    assert all(f.type in (MsgType.OK, MsgType.ERROR) for f in frames)
    assert not any(f.type == MsgType.OK and f.id != 0xABCDEF for f in frames), "host mode acted on a request"
    assert any(f.id == 0xABCDEF and f.type == MsgType.OK for f in frames)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(_frame, st.binary(max_size=100)), max_size=8))
def test_fuzz_agent_decoder(agent: Path, chunks: list[bytes]) -> None:
    code, frames, stderr = run_agent(agent, b"".join(chunks))
    assert code == 0, f"agent crashed ({code}): {stderr!r}"
    assert all(f.type in (MsgType.OK, MsgType.ERROR) for f in frames)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_frame, max_size=8))
def test_fuzz_well_framed_requests_never_swallow_the_next_one(agent: Path, frames_in: list[bytes]) -> None:
    code, frames, _ = run_agent(agent, b"".join(frames_in) + encode_frame(MsgType.PING, 0xABCDEF))
    assert code == 0
    assert any(f.id == 0xABCDEF and f.type == MsgType.OK for f in frames)
