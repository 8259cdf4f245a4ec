"""The wire format: host encoder/decoder round trips, and the agent's own decoder fuzzed on the host.

The agent binary runs here as ``amber-agent --serve-stdio``: it decodes every frame exactly as PID 1 does
but refuses to act, so random and hostile frames exercise the real C decoder without touching the host.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amber.vm.protocol import (
    HEADER,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    MsgType,
    ProtocolError,
    Tag,
    decode_fields,
    encode_field,
    encode_frame,
    encode_request,
)


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
    assert frames[0].type == MsgType.OK and frames[0].text(Tag.VERSION) == "amber-agent 1"
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


_field = st.tuples(st.integers(0, 255), st.binary(max_size=64))
_frame = st.builds(
    lambda t, i, fields, raw: encode_frame(t, i, raw if raw is not None else b"".join(
        encode_field(tag, value) for tag, value in fields)),
    st.sampled_from([*MsgType, 0, 11, 63, 255]), st.integers(0, 2**32 - 1), st.lists(_field, max_size=6),
    st.one_of(st.none(), st.binary(max_size=200)),
)


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
