"""Machines (machines-api.md §5): lifecycle, commands, processes, time, hibernate and resume, preview hosts.

Every route answers another namespace's machine with 404 ``machine_not_found``; bodies follow rules M1-M10.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from amber.api.body import json_body_openapi, read_json
from amber.api.deps import current_caller, machine_manager
from amber.api.metadata_filter import parse_metadata_filter
from amber.api.preview import host_info, preview_url
from amber.contract.errors import InvalidRequest
from amber.contract.machines import MachineStatus, PreviewReadinessRequest, SendStdinRequest, parse_model
from amber.machines import commands
from amber.machines.manager import MachineManager
from amber.machines.port_readiness import port_readiness
from amber.store.keys import Caller

router = APIRouter(prefix="/v1/machines", tags=["machines"])

MAX_LIST_LIMIT = 1000


def _fields(out: dict[str, Any], fields: str | None) -> dict[str, Any]:
    """A ``fields`` mask (comma-separated keys; ``id`` always kept)."""
    if not fields:
        return out
    wanted = {f.strip() for f in fields.split(",") if f.strip()} | {"id"}
    return {k: v for k, v in out.items() if k in wanted}


@router.post("", status_code=201,
             openapi_extra=json_body_openapi("CreateMachineRequest", required=False))
async def create_machine(
    request: Request,
    caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
) -> JSONResponse:
    body = await read_json(request, required=False)
    out = await manager.create(caller, body if body is not None else {}, idempotency_key)
    return JSONResponse(out, status_code=201)


@router.get("")
async def list_machines(
    caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
    state: str | None = Query(None),
    template: str | None = Query(None),
    metadata: str | None = Query(None),
    limit: int = Query(100),
    next_token: str | None = Query(None),
    fields: str | None = Query(None),
) -> JSONResponse:
    statuses = None
    if state:
        statuses = [s.strip() for s in state.split(",") if s.strip()]
        known = {str(s) for s in MachineStatus}
        for s in statuses:
            if s not in known:
                raise InvalidRequest("state", f"unknown status {s!r}: use {', '.join(sorted(known))}")
    query = parse_metadata_filter(metadata)
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequest("limit", f"must be between 1 and {MAX_LIST_LIMIT}")
    out = await manager.list_machines(caller, statuses=statuses, template=template, metadata=query, limit=limit,
                             next_token=next_token)
    if fields:
        out["items"] = [_fields(item, fields) for item in out["items"]]
    return JSONResponse(out)


@router.get("/{machine_id}")
async def get_machine(
    machine_id: str,
    caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
    fields: str | None = Query(None),
) -> JSONResponse:
    return JSONResponse(_fields(await manager.get(caller, machine_id), fields))


@router.delete("/{machine_id}")
async def destroy_machine(
    machine_id: str, caller: Caller = Depends(current_caller), manager: MachineManager = Depends(machine_manager)
) -> JSONResponse:
    return JSONResponse(await manager.destroy(caller, machine_id))


@router.post("/{machine_id}/timeout", openapi_extra=json_body_openapi("SetTimeoutRequest"))
async def set_timeout(
    machine_id: str, request: Request, caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
) -> JSONResponse:
    return JSONResponse(await manager.set_timeout(caller, machine_id, await read_json(request)))


@router.post("/{machine_id}/hibernate")
async def hibernate_machine(
    machine_id: str, caller: Caller = Depends(current_caller), manager: MachineManager = Depends(machine_manager)
) -> JSONResponse:
    return JSONResponse(await manager.hibernate(caller, machine_id))


@router.post("/{machine_id}/resume")
async def resume_machine(
    machine_id: str, caller: Caller = Depends(current_caller), manager: MachineManager = Depends(machine_manager)
) -> JSONResponse:
    return JSONResponse(await manager.resume(caller, machine_id))


# ---- commands and processes ------------------------------------------------------------------------------------


@router.post("/{machine_id}/exec", openapi_extra=json_body_openapi("ExecRequest"))
async def exec_command(
    machine_id: str, request: Request, caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
) -> JSONResponse:
    body = await read_json(request)
    live = await manager.live_for(caller, machine_id)
    command, background = commands.plan_command(live, body)
    if background:
        process = await commands.start(live, command)
        return JSONResponse({"pid": process.pid})
    return JSONResponse(await commands.run(live, command))


@router.get("/{machine_id}/processes")
async def list_processes(
    machine_id: str, caller: Caller = Depends(current_caller), manager: MachineManager = Depends(machine_manager)
) -> JSONResponse:
    live = await manager.live_for(caller, machine_id)
    return JSONResponse([p.info() for p in live.processes.all()])


@router.get("/{machine_id}/processes/{pid}/logs")
async def get_process_logs(
    machine_id: str, pid: int, caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
) -> JSONResponse:
    live = await manager.live_for(caller, machine_id)
    return JSONResponse(commands.process_of(live, pid).logs())


@router.post("/{machine_id}/processes/{pid}/kill", status_code=204)
async def kill_process(
    machine_id: str, pid: int, caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
) -> Response:
    live = await manager.live_for(caller, machine_id)
    await commands.kill(live, pid)
    return Response(status_code=204)


@router.post("/{machine_id}/processes/{pid}/stdin", status_code=204,
             openapi_extra=json_body_openapi("SendStdinRequest"))
async def send_stdin(
    machine_id: str, pid: int, request: Request, caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
) -> Response:
    req = parse_model(SendStdinRequest, await read_json(request), "SendStdinRequest")
    live = await manager.live_for(caller, machine_id)
    await commands.send_stdin(live, pid, req.data.encode())
    return Response(status_code=204)


# ---- ports -------------------------------------------------------------------------------------------------------


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidRequest("port", "must be an integer between 1 and 65535")
    return value


@router.post("/{machine_id}/host", openapi_extra=json_body_openapi("GetHostRequest"))
async def get_host(
    machine_id: str, request: Request, caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
) -> JSONResponse:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    port = _port(body.get("port"))
    await manager.get(caller, machine_id)  # 404 for another namespace's machine
    return JSONResponse(host_info(manager, request, machine_id, port))


@router.post("/{machine_id}/ports/{port}/readiness", openapi_extra=json_body_openapi("PreviewReadinessRequest"))
async def check_preview_readiness(
    machine_id: str, port: int, request: Request, caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
) -> JSONResponse:
    body = await read_json(request, required=False)
    probe = parse_model(PreviewReadinessRequest, {} if body is None else body, "the readiness request")
    live = await manager.live_for(caller, machine_id)
    return JSONResponse(await port_readiness(live, _port(port), probe))


@router.get("/{machine_id}/ports/{port}/preview-url")
async def get_preview_url(
    machine_id: str, port: int, request: Request, caller: Caller = Depends(current_caller),
    manager: MachineManager = Depends(machine_manager),
) -> JSONResponse:
    await manager.get(caller, machine_id)
    return JSONResponse(preview_url(manager, request, machine_id, _port(port)))
