"""Endpoint families of the contract this server does not offer: 501 ``not_implemented`` (the SDK raises
``NotImplementedError``), after authentication and — for a machine's sub-resources — after the machine is found,
so another namespace's machine is still a 404 and never reveals which features exist.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, WebSocket
from fastapi.responses import JSONResponse

from amber.api.deps import current_caller, machine_manager, machine_snapshots
from amber.api.errors import error_body
from amber.machines.errors import NotImplementedProblem
from amber.machines.manager import MachineManager
from amber.machines.snapshots import Snapshots
from amber.store.ids import request_id
from amber.store.keys import Caller

router = APIRouter(tags=["not implemented"])

ALL = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# Sub-resources of one machine (first path segment after /v1/machines/{id}/) and what they are.
MACHINE_FAMILIES = {
    "pty": "PTY sessions",
    "code": "the code interpreter",
    "git": "git operations",
    "desktop": "desktop sessions",
    "volumes": "volumes",
    "ssh-access": "SSH access",
    "metrics": "machine metrics",
    "egress": "egress policies",
    "lifecycle": "lifecycle events",
    "uploads": "resumable uploads (files over 8 MiB: upload them with PUT /file or files.write)",
    "preview-urls": "preview grants",
}
FILE_FAMILIES = {
    "find": "searching file contents (run grep with commands.run)",
    "search": "searching file names (run find with commands.run)",
    "replace": "replacing in files (run sed with commands.run)",
    "download-url": "signed download URLs (use GET /v1/machines/{id}/file)",
    "upload-url": "signed upload URLs (use PUT /v1/machines/{id}/file)",
}
PORT_FAMILIES = {
    "signed-preview-url": "signed preview grants (use get_preview_url)",
    "preview-proxy-target": "preview proxy targets",
}
TOP_LEVEL = {
    "lifecycle": "lifecycle events and webhooks",
    "volumes": "volumes",
    "monitor": "the monitor stream",
    "functions": "functions",
    "secrets": "secrets",
    "environments": "environments",
}


def _machine_route(path: str, what: str) -> None:
    async def refuse(machine_id: str, caller: Caller = Depends(current_caller),
                     manager: MachineManager = Depends(machine_manager)) -> None:
        await manager.get(caller, machine_id)
        raise NotImplementedProblem(f"{what} is not available on this server")

    for suffix in ("", "/{rest:path}"):
        router.add_api_route(path + suffix, refuse, methods=ALL, include_in_schema=False)


def _snapshot_route(path: str, what: str) -> None:
    async def refuse(snapshot_id: str, caller: Caller = Depends(current_caller),
                     snapshots: Snapshots = Depends(machine_snapshots)) -> None:
        await snapshots.get(caller, snapshot_id)
        raise NotImplementedProblem(f"{what} is not available on this server")

    for suffix in ("", "/{rest:path}"):
        router.add_api_route(path + suffix, refuse, methods=ALL, include_in_schema=False)


def _top_route(path: str, what: str) -> None:
    async def refuse(caller: Caller = Depends(current_caller)) -> None:
        raise NotImplementedProblem(f"{what} is not available on this server")

    for suffix in ("", "/{rest:path}"):
        router.add_api_route(path + suffix, refuse, methods=ALL, include_in_schema=False)


def _socket_route(path: str, what: str) -> None:
    async def refuse(websocket: WebSocket) -> None:
        body = error_body(request_id(), "not_implemented", f"{what} is not available on this server")
        await websocket.send_denial_response(JSONResponse(body, status_code=501))

    router.add_api_websocket_route(path, refuse)


for _family, _what in MACHINE_FAMILIES.items():
    _machine_route(f"/v1/machines/{{machine_id}}/{_family}", _what)
for _family, _what in FILE_FAMILIES.items():
    _machine_route(f"/v1/machines/{{machine_id}}/files/{_family}", _what)
for _family, _what in PORT_FAMILIES.items():
    _machine_route(f"/v1/machines/{{machine_id}}/ports/{{port}}/{_family}", _what)
_snapshot_route("/v1/snapshots/{snapshot_id}/lifecycle", "lifecycle events")
for _family, _what in TOP_LEVEL.items():
    _top_route(f"/v1/{_family}", _what)
for _path, _what in (("/v1/lifecycle/ws", "lifecycle events"), ("/v1/monitor/ws", "the monitor stream"),
                     ("/v1/volumes/{volume_id}/ws", "volumes"),
                     ("/v1/machines/{machine_id}/lifecycle/ws", "lifecycle events")):
    _socket_route(_path, _what)
