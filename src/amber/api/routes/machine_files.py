"""Machine files (machines-api.md §5.11): JSON file operations, the raw byte endpoints and batch-write.

JSON bodies carry ``path`` (or ``old_path``/``new_path``) and ``user`` (null = the template's user); FileInfo
answers carry exactly the contract's keys. ``GET``/``PUT /file`` stream the bytes (chunked bodies without a
Content-Length are fine); nothing is held whole in memory except a batch-write part, which the multipart parser
spools to disk beyond 1 MiB.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from amber.api.body import json_body_openapi, raw_body_openapi, read_json
from amber.api.deps import current_caller, machine_manager
from amber.contract.errors import InvalidRequest
from amber.machines.errors import MachineProblem
from amber.machines.files import Files
from amber.machines.manager import MachineManager
from amber.store.keys import Caller

router = APIRouter(prefix="/v1/machines", tags=["files"])

MAX_BATCH_FILES = 1000


async def _files(manager: MachineManager, caller: Caller, machine_id: str) -> Files:
    return Files(await manager.live_for(caller, machine_id))


async def _object(request: Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    return body


@router.post("/{machine_id}/files/write", openapi_extra=json_body_openapi("WriteFileRequest"))
async def write_file(machine_id: str, request: Request, caller: Caller = Depends(current_caller),
                     manager: MachineManager = Depends(machine_manager)) -> JSONResponse:
    body = await _object(request)
    files = await _files(manager, caller, machine_id)
    return JSONResponse(await files.write(body))


@router.post("/{machine_id}/files/read", openapi_extra=json_body_openapi("ReadFileRequest"))
async def read_file(machine_id: str, request: Request, caller: Caller = Depends(current_caller),
                    manager: MachineManager = Depends(machine_manager)) -> JSONResponse:
    body = await _object(request)
    files = await _files(manager, caller, machine_id)
    return JSONResponse(await files.read(body))


@router.post("/{machine_id}/files/info", openapi_extra=json_body_openapi("PathRequest"))
async def file_info(machine_id: str, request: Request, caller: Caller = Depends(current_caller),
                    manager: MachineManager = Depends(machine_manager)) -> JSONResponse:
    body = await _object(request)
    files = await _files(manager, caller, machine_id)
    user = files.user_of(body)
    return JSONResponse(await files.info(await files.path(body.get("path"), user), user))


@router.post("/{machine_id}/files/exists", openapi_extra=json_body_openapi("PathRequest"))
async def file_exists(machine_id: str, request: Request, caller: Caller = Depends(current_caller),
                      manager: MachineManager = Depends(machine_manager)) -> JSONResponse:
    body = await _object(request)
    files = await _files(manager, caller, machine_id)
    user = files.user_of(body)
    return JSONResponse({"exists": await files.exists(await files.path(body.get("path"), user), user)})


@router.post("/{machine_id}/files/mkdir", status_code=204, openapi_extra=json_body_openapi("PathRequest"))
async def make_dir(machine_id: str, request: Request, caller: Caller = Depends(current_caller),
                   manager: MachineManager = Depends(machine_manager)) -> Response:
    body = await _object(request)
    files = await _files(manager, caller, machine_id)
    user = files.user_of(body)
    await files.mkdir(await files.path(body.get("path"), user), user)
    return Response(status_code=204)


@router.post("/{machine_id}/files/remove", status_code=204, openapi_extra=json_body_openapi("PathRequest"))
async def remove_file(machine_id: str, request: Request, caller: Caller = Depends(current_caller),
                      manager: MachineManager = Depends(machine_manager)) -> Response:
    body = await _object(request)
    files = await _files(manager, caller, machine_id)
    user = files.user_of(body)
    await files.remove(await files.path(body.get("path"), user), user)
    return Response(status_code=204)


@router.post("/{machine_id}/files/rename", openapi_extra=json_body_openapi("RenameFileRequest"))
async def rename_file(machine_id: str, request: Request, caller: Caller = Depends(current_caller),
                      manager: MachineManager = Depends(machine_manager)) -> JSONResponse:
    body = await _object(request)
    files = await _files(manager, caller, machine_id)
    user = files.user_of(body)
    old = await files.path(body.get("old_path"), user, "old_path")
    new = await files.path(body.get("new_path"), user, "new_path")
    return JSONResponse(await files.rename(old, new, user))


@router.post("/{machine_id}/files/permissions", status_code=204,
             openapi_extra=json_body_openapi("SetPermissionsRequest"))
async def set_permissions(machine_id: str, request: Request, caller: Caller = Depends(current_caller),
                          manager: MachineManager = Depends(machine_manager)) -> Response:
    body = await _object(request)
    files = await _files(manager, caller, machine_id)
    user = files.user_of(body)
    raw = body.get("permissions", body.get("mode"))
    try:
        mode = int(raw, 8) if isinstance(raw, str) else int(raw) if isinstance(raw, int) else -1
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise InvalidRequest("permissions", "must be an octal mode such as '0755'")
    await files.chmod(await files.path(body.get("path"), user), mode, user)
    return Response(status_code=204)


@router.get("/{machine_id}/files")
async def list_dir(machine_id: str, path: str = Query("/"), depth: int = Query(1), user: str | None = Query(None),
                   caller: Caller = Depends(current_caller),
                   manager: MachineManager = Depends(machine_manager)) -> JSONResponse:
    files = await _files(manager, caller, machine_id)
    user = files.user_of({"user": user})
    return JSONResponse(await files.list(await files.path(path, user), depth, user))


@router.get("/{machine_id}/file")
async def download_file(machine_id: str, path: str = Query(...), user: str | None = Query(None),
                        caller: Caller = Depends(current_caller),
                        manager: MachineManager = Depends(machine_manager)) -> StreamingResponse:
    files = await _files(manager, caller, machine_id)
    user = files.user_of({"user": user})
    resolved = await files.path(path, user)
    stream = await files.download(resolved, user)
    return StreamingResponse(stream, media_type="application/octet-stream")


@router.put("/{machine_id}/file", status_code=204,
            openapi_extra=raw_body_openapi("application/octet-stream"))
async def upload_file(machine_id: str, request: Request, path: str = Query(...), user: str | None = Query(None),
                      caller: Caller = Depends(current_caller),
                      manager: MachineManager = Depends(machine_manager)) -> Response:
    files = await _files(manager, caller, machine_id)
    user = files.user_of({"user": user})
    await files.upload(await files.path(path, user), user, request.stream())
    return Response(status_code=204)


@router.post("/{machine_id}/file", status_code=204,
             openapi_extra=raw_body_openapi("multipart/form-data", "application/octet-stream"))
async def upload_file_multipart(machine_id: str, request: Request, path: str = Query(...),
                                user: str | None = Query(None), caller: Caller = Depends(current_caller),
                                manager: MachineManager = Depends(machine_manager)) -> Response:
    files = await _files(manager, caller, machine_id)
    user = files.user_of({"user": user})
    target = await files.path(path, user)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise InvalidRequest("file", "the multipart body needs a 'file' part")
        await files.upload(target, user, _read_parts(part))
    else:
        await files.upload(target, user, request.stream())
    return Response(status_code=204)


async def _read_parts(part: Any) -> Any:
    while chunk := await part.read(1 << 20):
        yield chunk


@router.post("/{machine_id}/files/batch-write", openapi_extra=raw_body_openapi("multipart/form-data"))
async def batch_write(machine_id: str, request: Request, caller: Caller = Depends(current_caller),
                      manager: MachineManager = Depends(machine_manager)) -> JSONResponse:
    files = await _files(manager, caller, machine_id)
    form = await request.form(max_files=MAX_BATCH_FILES + 1)
    raw = form.get("manifest")
    if raw is None:
        raise InvalidRequest("manifest", "the multipart body needs a 'manifest' part")
    text = raw if isinstance(raw, str) else (await raw.read()).decode("utf-8", errors="replace")
    try:
        manifest = json.loads(text)
    except ValueError:
        raise InvalidRequest("manifest", "is not valid JSON") from None
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_BATCH_FILES:
        raise InvalidRequest("manifest.files", f"must be a list of at most {MAX_BATCH_FILES} entries")
    user = files.user_of(manifest)
    results: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or \
                not isinstance(entry.get("field"), str):
            raise InvalidRequest(f"manifest.files[{i}]", "needs a 'path' and a 'field'")
        raw_path = entry["path"]
        part = form.get(entry["field"])
        if part is None or isinstance(part, str):
            results.append({"status": "error", "path": raw_path, "error": f"no part named {entry['field']!r}"})
            continue
        try:
            target = await files.path(raw_path, user, f"manifest.files[{i}].path")
            await files.upload(target, user, _read_parts(part))
            results.append({"status": "success", "path": raw_path, "info": await files.info(target, user)})
        except MachineProblem as exc:
            results.append({"status": "error", "path": raw_path, "error": exc.message})
        except InvalidRequest as exc:
            results.append({"status": "error", "path": raw_path, "error": str(exc)})
    return JSONResponse({"results": results})
