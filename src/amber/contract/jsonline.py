"""JSON text that stays one line through any line splitter: the one encoder of build log entries. Pure.

A build prints arbitrary bytes. Its log entries travel as SSE ``data:`` lines, and clients split lines the way
Python's ``str.splitlines`` does (httpx's ``iter_lines``, hence nullspace-sdk): on ``\\n``, ``\\r``, ``\\x0b``,
``\\x0c``, ``\\x1c``-``\\x1e``, U+0085, U+2028 and U+2029. JSON escapes the control characters among them but
not U+0085, U+2028 or U+2029, so ``dumps_line`` escapes those too (``\\u2028`` …), which every JSON parser reads
back as the same character.

Invalid UTF-8 has one treatment everywhere: output bytes are decoded with replacement (each invalid sequence
becomes U+FFFD) where they enter Amber (the guest output splitter, the BuildKit progress reader), so the SSE
stream, the polled ``entries`` and the stored log carry the same text. ``dumps_line`` also replaces lone
surrogates (which UTF-8 cannot encode) by U+FFFD, so no string can make an entry unencodable.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Line breaks for str.splitlines that json.dumps(ensure_ascii=False) leaves raw.
_SEPARATORS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_SURROGATE = re.compile("[\ud800-\udfff]")
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # everything str.splitlines splits on


def line_safe(json_text: str) -> str:
    """``json_text`` (valid JSON) with the line separators JSON leaves raw escaped; the same JSON value.
    Idempotent; the raw characters can only occur inside JSON strings, where the escape means the same."""
    if json_text.isascii():
        return json_text
    return _SURROGATE.sub("\ufffd", json_text).translate(_SEPARATORS)


def dumps_line(value: Any) -> str:
    """Compact JSON of ``value`` (non-ASCII text kept as is) containing no character any line splitter breaks
    on; lone surrogates become U+FFFD."""
    return line_safe(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
