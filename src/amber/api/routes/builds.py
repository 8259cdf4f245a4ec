"""Build entry points and lifecycle: #1-#10 (create, SSE build, background build, status, logs, cancel,
retry, promote, plan, validate)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from amber.api.context_dockerfile import with_context_dockerfile
from amber.api.deps import AppState, app_state, current_caller
from amber.api.errors import ApiError, request_id_of
from amber.api.schemas.responses import (
    ErrorResponse,
    TemplateBuild,
    TemplateBuildStatusSnapshot,
    TemplateInfo,
)
from amber.api.sse import sse_stream, wait_terminal
from amber.contract.catalog import CancelTemplateBuildRequest, PromoteTemplateBuildRequest, RetryTemplateBuildRequest
from amber.contract.errors import InvalidRef, InvalidRequest
from amber.contract.plan import TemplateBuildPlanResponse, TemplateBuildValidationResponse
from amber.contract.template_refs import check_tag
from amber.contract.validation import validate_create_request
from amber.store.blobs import BlobProblem
from amber.store.keys import Caller

router = APIRouter(prefix="/v1/templates", tags=["templates"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
    409: {"model": ErrorResponse}, 503: {"model": ErrorResponse},
}
_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateTemplateRequest"}}},
    }
}
_OPTIONAL_BODY = Body(None)
_SSE_RESPONSE: dict[str, Any] = {
    "description": "Server-Sent Events: one TemplateBuildLogEntry per `data:` line, `id:` = its offset",
    "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/TemplateBuildLogEntry"}}},
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status)


async def _read_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise InvalidRequest("body", "request body is required (a JSON object)")
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidRequest("body", "request body is not valid JSON") from None


async def _accept(request: Request, state: AppState, caller: Caller) -> dict[str, Any]:
    data = await with_context_dockerfile(await _read_body(request), state, caller)
    req = validate_create_request(data)
    return await state.builds.accept(caller, req, request_id=request_id_of(request))


@router.post("", status_code=201, response_model=TemplateInfo, responses=_ERRORS, openapi_extra=_CREATE_BODY,
             summary="Create a template and wait for the build (deprecated blocking form)")
async def create_template(request: Request, caller: Caller = Depends(current_caller),
                          state: AppState = Depends(app_state)) -> Response:
    build = await _accept(request, state, caller)
    build_id = build["build_id"]
    last = await wait_terminal(state.builds, build_id)
    entry = json.loads(last.entry_json) if last is not None else {}
    if last is not None and last.kind == "end" and entry.get("result"):
        return _json(entry["result"], 201)
    view = await state.builds.build_json(build_id)
    detail = view.get("error_detail")
    if detail is not None:
        raise ApiError(400, str(detail.get("code", "build_error")), str(detail.get("message")),
                       error_detail=detail, build_id=build_id)
    raise ApiError(400, "build_error", f"build {build_id} ended as {view['status']}", build_id=build_id)


@router.post("/build", response_class=StreamingResponse, responses={
    200: _SSE_RESPONSE, **_ERRORS},
    openapi_extra=_CREATE_BODY, summary="Build a template, streaming its log as SSE")
async def build_template(request: Request, caller: Caller = Depends(current_caller),
                         state: AppState = Depends(app_state)) -> StreamingResponse:
    build = await _accept(request, state, caller)
    return StreamingResponse(sse_stream(state.builds, build["build_id"], 0, follow=True),
                             media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/builds", status_code=202, response_model=TemplateBuild, responses=_ERRORS,
             openapi_extra=_CREATE_BODY, summary="Start a background template build")
async def start_template_build(request: Request, caller: Caller = Depends(current_caller),
                               state: AppState = Depends(app_state)) -> Response:
    return _json(await _accept(request, state, caller), 202)


@router.get("/builds/{build_id}", response_model=TemplateBuildStatusSnapshot, responses=_ERRORS,
            summary="Build status plus log entries from an offset")
async def get_template_build_status(build_id: str, offset: int = Query(0, ge=0),
                                    caller: Caller = Depends(current_caller),
                                    state: AppState = Depends(app_state)) -> Response:
    text = await state.builds.snapshot_json(caller, build_id, offset)
    return Response(text, media_type="application/json")


@router.get("/builds/{build_id}/logs", response_class=StreamingResponse, responses={
    200: _SSE_RESPONSE, **_ERRORS},
    summary="Replay (and follow) a build's log as SSE")
async def stream_template_build_logs(build_id: str, offset: int | None = Query(None, ge=0),
                                     cursor: int | None = Query(None, ge=0), follow: bool = False,
                                     caller: Caller = Depends(current_caller),
                                     state: AppState = Depends(app_state)) -> StreamingResponse:
    await state.builds.get_owned(caller, build_id)
    start = offset if offset is not None else (cursor if cursor is not None else 0)
    return StreamingResponse(sse_stream(state.builds, build_id, start, follow=follow),
                             media_type="text/event-stream", headers=SSE_HEADERS)


@router.post("/builds/{build_id}/cancel", response_model=TemplateBuildStatusSnapshot, responses=_ERRORS,
             summary="Cancel a queued or running build (idempotent)")
async def cancel_template_build(build_id: str, body: CancelTemplateBuildRequest | None = _OPTIONAL_BODY,
                                caller: Caller = Depends(current_caller),
                                state: AppState = Depends(app_state)) -> Response:
    text = await state.builds.cancel(caller, build_id, body.reason if body else None)
    return Response(text, media_type="application/json")


@router.post("/builds/{build_id}/retry", status_code=202, response_model=TemplateBuild, responses=_ERRORS,
             summary="Start a new attempt of a finished build")
async def retry_template_build(build_id: str, body: RetryTemplateBuildRequest | None = _OPTIONAL_BODY,
                               caller: Caller = Depends(current_caller),
                               state: AppState = Depends(app_state)) -> Response:
    fresh = body.model_dump(exclude_none=True) if body else {}
    if fresh.get("tags") is not None and not fresh["tags"]:
        raise InvalidRequest("tags", "must not be empty when given")
    return _json(await state.builds.retry(caller, build_id, fresh), 202)


@router.post("/builds/{build_id}/promote", response_model=TemplateInfo, responses=_ERRORS,
             summary="Move tags onto a successful build's artifact")
async def promote_template_build(build_id: str, body: PromoteTemplateBuildRequest,
                                 caller: Caller = Depends(current_caller),
                                 state: AppState = Depends(app_state)) -> Response:
    tags = list(body.tags or []) + ([body.tag] if body.tag is not None else [])
    if not tags:
        raise InvalidRequest("tag", "give 'tag' or a non-empty 'tags'")
    named = [(f"tags[{index}]", tag) for index, tag in enumerate(body.tags or [])]
    if body.tag is not None:
        named.append(("tag", body.tag))
    for field, tag in named:
        try:
            check_tag(tag, field)
        except InvalidRef as exc:
            raise InvalidRequest(field, str(exc)) from None
    info = await state.builds.promote(caller, build_id, list(dict.fromkeys(tags)))
    return _json(info)


@router.post("/plan", response_model=TemplateBuildPlanResponse, responses=_ERRORS, openapi_extra=_CREATE_BODY,
             summary="Normalise a build request into a plan (nothing is built)")
async def plan_template_build(request: Request, caller: Caller = Depends(current_caller),
                              state: AppState = Depends(app_state)) -> Response:
    data = await with_context_dockerfile(await _read_body(request), state, caller)
    return _json(await state.builds.plan(caller, data))


@router.post("/validate", response_model=TemplateBuildValidationResponse, responses=_ERRORS,
             openapi_extra=_CREATE_BODY, summary="Validate a build request, reporting problems as data")
async def validate_template_build(request: Request, caller: Caller = Depends(current_caller),
                                  state: AppState = Depends(app_state)) -> Response:
    raw = await request.body()
    try:
        data: Any = json.loads(raw) if raw else None
    except ValueError:
        data = None
    try:
        data = await with_context_dockerfile(data, state, caller)
    except (InvalidRequest, BlobProblem) as exc:  # validation reports problems as data, never as HTTP errors
        field, code = (exc.field, "invalid_request") if isinstance(exc, InvalidRequest) else (
            "build_context", "file_upload_error")
        return _json({"valid": False, "warnings": [], "errors": [
            {"code": code, "message": str(exc), "phase": "request", "field": field}]})
    return _json(await state.builds.validate(caller, data))
