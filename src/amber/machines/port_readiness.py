"""Is a machine's port ready for its preview URL? (``POST /v1/machines/{id}/ports/{port}/readiness``)

The guest agent probes the port from inside the machine — a TCP connect, or an HTTP GET of a path answered
below 400 — with the same probe a template's readiness check uses (``probe_once``), every ``interval_ms`` until
it passes or ``timeout_secs`` have passed. Not ready is still an answer (``ready: false`` with why), not an error.
The route is always ready once the machine runs here: preview URLs are served by this server itself.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from amber.builds.pipeline.readiness import probe_once
from amber.builds.planning.runtime import Readiness
from amber.contract.machines import PreviewReadinessRequest
from amber.machines.live import LiveMachine

NOT_READY_ADVICE = ("Start the service, confirm the port, and bind to 0.0.0.0 (or 127.0.0.1) inside the machine; "
                    "for kind http, check that the path answers with a status below 400.")


async def port_readiness(live: LiveMachine, port: int, request: PreviewReadinessRequest) -> dict[str, Any]:
    """PreviewReadinessResponse for ``port`` of ``live`` after probing as ``request`` asks."""
    readiness = Readiness(kind=request.kind, port=port, path=request.path if request.kind == "http" else None)
    started = time.monotonic()
    deadline = started + request.timeout_secs
    attempts = 0
    why: str | None = None
    while True:
        attempts += 1
        left = max(0.5, deadline - time.monotonic())
        why = await asyncio.to_thread(probe_once, live.agent, readiness, env={}, cwd="/", user="root", timeout=left)
        if why is None or time.monotonic() + request.interval_ms / 1000 > deadline:
            break
        await asyncio.sleep(request.interval_ms / 1000)
    live.touch()
    answer: dict[str, Any] = {
        "ready": why is None, "route_ready": True, "service_ready": why is None, "machine_id": live.id,
        "port": port, "kind": request.kind, "checked_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "elapsed_ms": int((time.monotonic() - started) * 1000), "attempts": attempts,
    }
    if request.kind == "http":
        answer["path"] = request.path
    if why is not None:
        answer.update(code="preview_service_not_ready", error=f"port {port} is not ready: {why}",
                      suggested_action=NOT_READY_ADVICE)
    return answer
