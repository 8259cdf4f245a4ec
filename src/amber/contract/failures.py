"""How a build fails, in the contract's words (templates-models.md TemplateFailureDetail, R60-R64). Pure.

``FailurePhase`` is where a build failed (a different vocabulary from the log's ``LogPhase``); ``BuildFailed`` is
the one exception the pipeline raises for a failure the user can act on. The tables say, per failure phase,
which log phase its terminal ``error`` entry carries, whether a retry may help, and what to do about it;
``failure_detail`` builds the TemplateFailureDetail with exactly the SDK's key set. Details never hold secrets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from amber.contract.logs import LogPhase


class FailurePhase(StrEnum):
    """TemplateFailurePhase: where a build failed (a different vocabulary from LogPhase)."""

    AUTH = "auth"
    PREFLIGHT = "preflight"
    BLOB_UPLOAD = "blob_upload"
    PREPARE = "prepare"
    BUILD_STEP = "build_step"
    READINESS = "readiness"
    SNAPSHOT = "snapshot"
    FINALIZE = "finalize"
    INTERRUPTED = "interrupted"


class BuildFailed(Exception):
    """A build failure the user can act on. ``code`` is the contract's failure code (normally build_error)."""

    def __init__(
        self,
        message: str,
        *,
        phase: FailurePhase,
        code: str = "build_error",
        step_index: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.phase = phase
        self.code = code
        self.step_index = step_index
        self.details = details  # phase-specific ``error_detail.details`` keys (e.g. ``command``), never secrets


SUGGESTED_ACTIONS: dict[str, str] = {
    "auth": "Check the registry credentials (base_image_auth / registry_auth) and retry with fresh ones.",
    "preflight": "Run the blob preflight again and upload every missing file before building.",
    "blob_upload": "Upload the build-context files again (preflight, then PUT each missing blob) and rebuild.",
    "prepare": "Check base_image, the build request and the server's disk space, then retry.",
    "build_step": "Fix the failing step (its last output lines are in the message) and build again.",
    "readiness": "Make sure start_cmd starts the service and the readiness probe matches it, then rebuild.",
    "snapshot": "Retry the build; if it keeps failing, check the server's disk space and logs.",
    "finalize": "Retry the build; if it keeps failing, check the server's disk space and logs.",
    "interrupted": "Retry the build (TemplateBuild.retry); the server stopped while it was running.",
}
# The log ``phase`` of the terminal ``error`` entry for each failure phase (two vocabularies, R60/R64).
FAILURE_LOG_PHASES: dict[str, str] = {
    "auth": "preparing",
    "preflight": "preparing",
    "blob_upload": "preparing",
    "prepare": "preparing",
    "build_step": "step",
    "readiness": "readiness",
    "snapshot": "snapshot",
    "finalize": "finalize",
}
RETRYABLE_PHASES = {"auth", "prepare", "snapshot", "finalize", "interrupted", "blob_upload"}
# Where a build that failed without saying so (a crash, a timeout) failed, by the last log phase it reached.
LOG_PHASE_FAILURES = {
    LogPhase.CACHE: FailurePhase.PREPARE,
    LogPhase.PREPARING: FailurePhase.PREPARE,
    LogPhase.VM_CREATE: FailurePhase.PREPARE,
    LogPhase.STEP: FailurePhase.BUILD_STEP,
    LogPhase.SYNC: FailurePhase.BUILD_STEP,
    LogPhase.STARTUP: FailurePhase.READINESS,
    LogPhase.READINESS: FailurePhase.READINESS,
    LogPhase.SNAPSHOT: FailurePhase.SNAPSHOT,
    LogPhase.FINALIZE: FailurePhase.FINALIZE,
    LogPhase.CLEANUP: FailurePhase.FINALIZE,
    LogPhase.RETRY: FailurePhase.PREPARE,
}


def failure_message(text: str, server_roots: Sequence[str] = ()) -> str:
    """A failure message as stored and shown (the ``error`` entry, ``TemplateBuild.error``, ``error_detail``): the
    text with NUL as U+FFFD, since it quotes build output and PostgreSQL text cannot hold NUL (log lines keep
    every character; only this summary changes), and no path under ``server_roots`` (``hide_server_paths``)."""
    return hide_server_paths(text.replace("\x00", "\ufffd"), server_roots)


_PATH_TAIL = r"""(?:/[^\s'"`:,;()\[\]]*|(?![\w-]|\.\w))"""  # the rest of the path, or a root ending right there
_INSIDE = re.compile(r"/tmp/buildkit-mount\d+|/overlay2/[0-9a-z]+/(?:merged|diff)")


def hide_server_paths(text: str, roots: Sequence[str]) -> str:
    """``text`` without the server's own paths: every absolute path under one of ``roots`` (the data directory,
    dockerd's roots) becomes the path inside the build's filesystem when it is one (a BuildKit mount or an overlay
    layer: ``…/tmp/buildkit-mount123/app/x`` → ``/app/x``), else ``<server path>``."""
    usable = sorted({r.rstrip("/") for r in roots if len(r.rstrip("/")) > 1}, key=len, reverse=True)
    if not usable or not any(root in text for root in usable):
        return text
    pattern = re.compile("(?:" + "|".join(re.escape(r) for r in usable) + ")" + _PATH_TAIL)

    def replace(match: re.Match[str]) -> str:
        inside = _INSIDE.search(match.group(0))
        if inside is None:
            return "<server path>"
        return match.group(0)[inside.end():] or "/"

    return pattern.sub(replace, text)


def failure_detail(
    *,
    code: str,
    message: str,
    phase: str,
    build_id: str,
    attempt: int,
    reason: str,
    step_index: int | None = None,
    request_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A TemplateFailureDetail with exactly the SDK's key set."""
    detail: dict[str, Any] = {
        "code": code,
        "message": message,
        "phase": phase,
        "retryable": phase in RETRYABLE_PHASES,
        "suggested_action": SUGGESTED_ACTIONS.get(phase, "Retry the build."),
        "attempt": attempt,
        "build_id": build_id,
        "details": {"reason": reason, **(extra or {})},
    }
    if step_index is not None:
        detail["step_index"] = step_index
    if request_id is not None:
        detail["request_id"] = request_id
    return detail


def failure_reason(phase: FailurePhase) -> str:
    """``error_detail.details.reason`` of a ``BuildFailed`` in ``phase`` (``step_failed``, ``readiness_failed``,
    ``registry_auth_failed``, else ``<phase>_failed``)."""
    return {
        FailurePhase.BUILD_STEP: "step_failed",
        FailurePhase.READINESS: "readiness_failed",
        FailurePhase.AUTH: "registry_auth_failed",
    }.get(phase, f"{phase.value}_failed")
