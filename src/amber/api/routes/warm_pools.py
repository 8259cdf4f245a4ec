"""Template warm pools (machines-api.md §2): the ten ``/v1/template-warm-pools`` endpoints. Another namespace's
pool is 404; ``DELETE`` answers 200 with the row (state ``deleted``), and later reads are 404."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from amber.api.body import read_json
from amber.api.deps import current_caller, warm_pools
from amber.machines.pools import WarmPools
from amber.store.keys import Caller

router = APIRouter(prefix="/v1/template-warm-pools", tags=["template warm pools"])


@router.post("", status_code=201)
async def create_pool(request: Request, caller: Caller = Depends(current_caller),
                      pools: WarmPools = Depends(warm_pools)) -> JSONResponse:
    return JSONResponse(await pools.create(caller, await read_json(request)), status_code=201)


@router.get("")
async def list_pools(caller: Caller = Depends(current_caller), pools: WarmPools = Depends(warm_pools),
                     template: str | None = Query(None), state: str | None = Query(None),
                     status: str | None = Query(None), label: list[str] = Query([]),
                     limit: int | None = Query(None)) -> JSONResponse:
    return JSONResponse(await pools.list(caller, template=template, state=state, status=status, labels=label,
                                         limit=limit))


@router.get("/{pool_id}")
async def get_pool(pool_id: str, caller: Caller = Depends(current_caller),
                   pools: WarmPools = Depends(warm_pools)) -> JSONResponse:
    return JSONResponse(await pools.get(caller, pool_id))


@router.get("/{pool_id}/status")
async def get_pool_status(pool_id: str, caller: Caller = Depends(current_caller),
                          pools: WarmPools = Depends(warm_pools)) -> JSONResponse:
    return JSONResponse(await pools.status(caller, pool_id))


@router.patch("/{pool_id}")
async def update_pool(pool_id: str, request: Request, caller: Caller = Depends(current_caller),
                      pools: WarmPools = Depends(warm_pools)) -> JSONResponse:
    return JSONResponse(await pools.update(caller, pool_id, await read_json(request)))


@router.delete("/{pool_id}")
async def delete_pool(pool_id: str, caller: Caller = Depends(current_caller),
                      pools: WarmPools = Depends(warm_pools)) -> JSONResponse:
    return JSONResponse(await pools.set_state(caller, pool_id, "delete"))


@router.post("/{pool_id}/enable")
async def enable_pool(pool_id: str, caller: Caller = Depends(current_caller),
                      pools: WarmPools = Depends(warm_pools)) -> JSONResponse:
    return JSONResponse(await pools.set_state(caller, pool_id, "enable"))


@router.post("/{pool_id}/disable")
async def disable_pool(pool_id: str, caller: Caller = Depends(current_caller),
                       pools: WarmPools = Depends(warm_pools)) -> JSONResponse:
    return JSONResponse(await pools.set_state(caller, pool_id, "disable"))


@router.post("/{pool_id}/drain")
async def drain_pool(pool_id: str, caller: Caller = Depends(current_caller),
                     pools: WarmPools = Depends(warm_pools)) -> JSONResponse:
    return JSONResponse(await pools.set_state(caller, pool_id, "drain"))


@router.post("/{pool_id}/reconcile")
async def reconcile_pool(pool_id: str, caller: Caller = Depends(current_caller),
                         pools: WarmPools = Depends(warm_pools)) -> JSONResponse:
    return JSONResponse(await pools.reconcile(caller, pool_id))
