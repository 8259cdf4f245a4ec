"""The one encoder of build log entries (``amber.contract.jsonline``) and the SSE framing over it: whatever text a
build prints, an entry is one line for every line splitter (``str.splitlines``, which httpx and so the SDK use)
and decodes back to the same text; lone surrogates become U+FFFD. Pure: no server."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from amber.api.sse import frame
from amber.builds.logbus import Published
from amber.contract.jsonline import LINE_BREAKS, dumps_line, line_safe

TRICKY = LINE_BREAKS + "\x00\x07\x1b\x7f\u00a0\ufeff\ufffd\U0001f600"


def sdk_data_lines(raw: bytes) -> list[str]:
    """What nullspace-sdk does with an SSE body: httpx's iter_lines (``splitlines`` rules), keep ``data: `` lines."""
    return [line[6:] for line in raw.decode("utf-8").splitlines() if line.startswith("data: ")]


def test_every_line_break_is_escaped_and_round_trips() -> None:
    for char in TRICKY:
        text = dumps_line({"message": f"a{char}b"})
        assert len(text.splitlines()) == 1, repr(char)
        assert json.loads(text) == {"message": f"a{char}b"}
    assert dumps_line({"m": "\u2028\u2029\x85"}) == '{"m":"\\u2028\\u2029\\u0085"}'


def test_lone_surrogates_become_replacement_characters() -> None:
    text = dumps_line({"m": "bad\udcff\ud800end"})
    assert json.loads(text) == {"m": "bad\ufffd\ufffdend"}
    text.encode("utf-8")  # always encodable


@given(st.text(st.characters(codec=None, exclude_categories=())))
def test_any_text_is_one_encodable_line(message: str) -> None:
    text = dumps_line({"message": message, "kind": "message"})
    assert len(text.splitlines()) == 1
    expected = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in message)
    assert json.loads(text.encode("utf-8")) == {"message": expected, "kind": "message"}
    assert line_safe(text) == text  # idempotent


def test_sse_frames_entries_as_one_data_line_even_when_stored_raw() -> None:
    """An entry stored by an older version with a raw U+2028 is still framed on one line."""
    stored = json.dumps({"offset": 4, "message": "x\u2028y\x85z"}, ensure_ascii=False)
    raw = frame(Published(offset=4, kind="message", entry_json=stored))
    (data,) = sdk_data_lines(raw)
    assert json.loads(data) == {"offset": 4, "message": "x\u2028y\x85z"}
    assert raw.startswith(b"id: 4\nevent: log\ndata: ") and raw.endswith(b"\n\n")
