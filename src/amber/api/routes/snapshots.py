"""Machine snapshots and forks (machines-api.md §5.10): ``POST /v1/machines/{id}/snapshots``,
``POST /v1/machines/{id}/fork`` (both idempotent per ``Idempotency-Key``), ``GET /v1/snapshots[/{id}]`` and
``DELETE /v1/snapshots/{id}``. SnapshotInfo bodies carry exactly the contract's five keys (M2)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import JSONResponse

from amber.api.deps import current_caller, machine_snapshots
from amber.api.metadata_filter import parse_metadata_filter
from amber.machines.snapshots import Snapshots
from amber.store.keys import Caller

router = APIRouter(tags=["snapshots"])


@router.post("/v1/machines/{machine_id}/snapshots", status_code=201)
async def create_snapshot(
    machine_id: str, caller: Caller = Depends(current_caller), snapshots: Snapshots = Depends(machine_snapshots),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
) -> JSONResponse:
    return JSONResponse(await snapshots.create(caller, machine_id, idempotency_key), status_code=201)


@router.post("/v1/machines/{machine_id}/fork", status_code=201)
async def fork_machine(
    machine_id: str, caller: Caller = Depends(current_caller), snapshots: Snapshots = Depends(machine_snapshots),
    idempotency_key: str | None = Header(None, alias="Idempotency-Key"),
) -> JSONResponse:
    return JSONResponse(await snapshots.fork(caller, machine_id, idempotency_key), status_code=201)


@router.get("/v1/snapshots")
async def list_snapshots(
    caller: Caller = Depends(current_caller), snapshots: Snapshots = Depends(machine_snapshots),
    machine_id: str | None = Query(None), metadata: str | None = Query(None),
) -> JSONResponse:
    query = parse_metadata_filter(metadata)
    return JSONResponse(await snapshots.list(caller, machine_id=machine_id, metadata=query))


@router.get("/v1/snapshots/{snapshot_id}")
async def get_snapshot(
    snapshot_id: str, caller: Caller = Depends(current_caller), snapshots: Snapshots = Depends(machine_snapshots),
) -> JSONResponse:
    return JSONResponse(await snapshots.get(caller, snapshot_id))


@router.delete("/v1/snapshots/{snapshot_id}", status_code=204)
async def delete_snapshot(
    snapshot_id: str, caller: Caller = Depends(current_caller), snapshots: Snapshots = Depends(machine_snapshots),
) -> Response:
    await snapshots.delete(caller, snapshot_id)
    return Response(status_code=204)
