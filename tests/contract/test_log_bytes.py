"""Any bytes a build prints reach the unmodified SDK intact (issue 12): U+2028, U+2029, U+0085, CR-only lines,
NUL and invalid UTF-8 in a step's output survive ``Template.build`` (SSE), ``TemplateBuild.logs()`` (SSE replay)
and polling, which all show the same text (invalid UTF-8 as U+FFFD). The Dockerfile variant is in
tests/buildkit/test_sdk_dockerfile.py; the encoder itself is tested in tests/api/test_log_encoding.py."""

from __future__ import annotations

import pytest
from nullspace import Template, TemplateBuild, TemplateBuildLogEntry

from tests.contract.conftest import Sdk, unique

pytestmark = [pytest.mark.vm, pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True,
                                                      scope="module")]

# printf (busybox) octal escapes: U+2028 = e2 80 a8, U+2029 = e2 80 a9, U+0085 = c2 85; \377\376 and a
# truncated sequence (\342\200) are invalid UTF-8.
PRINT_EVERYTHING = (
    r"printf 'sep\342\200\250line\342\200\251para\302\205nel\r\n"
    r"cr-only\rprogress 50%%\rprogress 100%%\n"
    r"nul\000byte\n"
    r"ctl\013vt\014ff\034fs\035gs\036rs\n"
    r"bad\377\376utf8\342\200\n'"
)
EXPECTED_LINES = [
    "sep\u2028line\u2029para\u0085nel",
    "cr-only\rprogress 50%\rprogress 100%",
    "nul\x00byte",
    "ctl\x0bvt\x0cff\x1cfs\x1dgs\x1ers",
    "bad\ufffd\ufffdutf8\ufffd",
]


def messages(entries: list[TemplateBuildLogEntry]) -> list[str]:
    return [e.message for e in entries]


def test_every_byte_a_native_step_prints_reaches_the_sdk(sdk: Sdk) -> None:
    streamed: list[TemplateBuildLogEntry] = []
    template = Template.from_image(sdk.base_image).run_cmd(PRINT_EVERYTHING)
    build = Template.build(template, unique("bytes"), on_log_entry=streamed.append, **sdk.acme)
    assert build.status.value == "ready"
    for line in EXPECTED_LINES:
        assert line in messages(streamed), (line, messages(streamed))
    assert [e.offset for e in streamed] == list(range(len(streamed)))

    handle = TemplateBuild.connect(build.build_id, **sdk.acme)
    replayed = list(handle.logs(offset=0))
    polled: list[TemplateBuildLogEntry] = []
    handle.wait_until_terminal(poll_interval=0.2, on_log_entry=polled.append)
    assert messages(replayed) == messages(streamed)
    assert messages(polled) == messages(streamed)
    handle.close()
    build.close()


def test_a_failing_step_reports_its_output_intact(sdk: Sdk) -> None:
    """The failure message quotes the last output: the terminal ``error`` entry, ``error`` and ``error_detail``
    carry the same text (NUL as U+FFFD there: PostgreSQL text cannot hold it; the log lines keep it)."""
    template = Template.from_image(sdk.base_image).run_cmd(PRINT_EVERYTHING + "; exit 3")
    handle = Template.build_in_background(template, unique("bytes-fail"), **sdk.acme)
    streamed = list(handle.logs(offset=0, follow=True))
    for line in EXPECTED_LINES:
        assert line in messages(streamed)
    failure = streamed[-1]
    assert failure.kind.value == "error" and failure.error_detail is not None
    tail = [line.replace("\x00", "\ufffd") for line in EXPECTED_LINES]
    assert failure.message.endswith("last output:\n" + "\n".join(tail)), failure.message
    status = handle.get_status()
    assert messages(status.entries) == messages(streamed)
    assert handle.status.value == "error" and handle.error_detail is not None
    assert handle.error == failure.message == handle.error_detail.message == failure.error_detail.message
    handle.close()
