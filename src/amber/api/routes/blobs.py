"""Build-context blobs: #11 preflight (never 501, C9) and #12 upload (raw bytes, sha256- and size-verified; a
complete blob is immutable: the same bytes again are 204, different bytes 409 ``conflict``). The upload reads its
own body (``raw_body_openapi``), outside the JSON body limit."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from amber.api.body import raw_body_openapi
from amber.api.deps import AppState, app_state, current_caller
from amber.api.schemas.responses import (
    ErrorResponse,
    TemplateBlobPreflightResponse,
)
from amber.contract.catalog import TemplateBlobPreflightRequest
from amber.store.blobs import PreflightFile, blob_for_upload, mark_complete, preflight
from amber.store.errors import Conflict
from amber.store.keys import Caller

router = APIRouter(prefix="/v1/templates/blobs", tags=["templates"])
_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}}
_UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, 409: {"model": ErrorResponse}}


@router.post("/preflight", response_model=TemplateBlobPreflightResponse, responses=_ERRORS,
             summary="Hand out blob ids for build-context files and say which must be uploaded")
async def preflight_template_blobs(body: TemplateBlobPreflightRequest, caller: Caller = Depends(current_caller),
                                   state: AppState = Depends(app_state)) -> Response:
    files = [
        PreflightFile(path=f.path, entry_type=f.entry_type, mode=f.mode, sha256=f.sha256, size_bytes=f.size_bytes,
                      force_upload=bool(f.force_upload))
        for f in body.files
    ]
    limit = state.settings.max_blob_bytes
    results = await state.db.run(lambda s: preflight(s, state.blobs, caller.namespace_id, files, limit))
    return JSONResponse({"files": results})


@router.put("/{blob_id}", status_code=204, responses=_UPLOAD_ERRORS, summary="Upload one preflighted file's bytes",
            openapi_extra=raw_body_openapi("application/octet-stream"))
async def upload_template_blob(blob_id: str, request: Request, caller: Caller = Depends(current_caller),
                               state: AppState = Depends(app_state)) -> Response:
    blob = await state.db.run(lambda s: blob_for_upload(s, caller.namespace_id, blob_id))
    if blob.complete and state.blobs.has(blob.sha256):  # complete blobs are immutable: same bytes again are fine
        if not await state.blobs.same_bytes(request.stream(), sha256=blob.sha256, size_bytes=blob.size_bytes):
            raise Conflict(f"blob {blob_id!r} is complete and immutable, and these bytes differ from it; run the "
                           "blob preflight for the new content to get a new blob id")
        return Response(status_code=204)
    await state.blobs.ingest(request.stream(), sha256=blob.sha256, size_bytes=blob.size_bytes,
                             max_bytes=state.settings.max_blob_bytes)
    await state.db.run(lambda s: mark_complete(s, blob_id))
    return Response(status_code=204)
