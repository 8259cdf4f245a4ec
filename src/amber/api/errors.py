"""ErrorResponse bodies (§0.7): ``error``, ``code``, optional ``error_detail``/``build_id``, ``request_id``.

``error_detail`` is always exactly a TemplateFailureDetail (the SDK rejects any other key inside it), and
the same request id is sent in the ``x-request-id`` header by the middleware.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from amber.blobs.store import UploadRejected
from amber.contract.errors import InvalidRef, InvalidRequest
from amber.machines.errors import MachineProblem
from amber.store.blobs import BlobProblem
from amber.store.errors import StoreError

log = logging.getLogger("amber.api")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        error_detail: dict[str, Any] | None = None,
        build_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.error_detail = error_detail
        self.build_id = build_id
        self.headers = headers


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_body(
    request_id: str, code: str, message: str, *, error_detail: dict[str, Any] | None = None,
    build_id: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "code": code, "request_id": request_id}
    if error_detail is not None:
        body["error_detail"] = error_detail
        body["retryable"] = error_detail["retryable"]
        body["suggested_action"] = error_detail["suggested_action"]
    if build_id is not None:
        body["build_id"] = build_id
    return body


def upload_detail(phase: str, message: str, details: dict[str, Any], request_id: str) -> dict[str, Any]:
    """A TemplateFailureDetail for ``file_upload_error`` (reason inside ``details``, never at the top)."""
    return {
        "code": "file_upload_error",
        "message": message,
        "phase": phase,
        "retryable": details.get("reason") not in ("size_limit_exceeded", "directory_extract_invalid_path"),
        "suggested_action": "Run the blob preflight again and upload every file it reports missing, "
        "with exactly the bytes it described.",
        "request_id": request_id,
        "details": details,
    }


def _respond(
    request: Request, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on this request's path (a 405's ``Allow``), not only the
    methods of the first route whose path matched."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        body = error_body(request_id_of(request), exc.code, exc.message, error_detail=exc.error_detail,
                          build_id=exc.build_id)
        return _respond(request, exc.status, body, exc.headers)

    @app.exception_handler(MachineProblem)
    async def _machine_problem(request: Request, exc: MachineProblem) -> JSONResponse:
        headers = None
        if exc.retry_after is not None:
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return _respond(request, exc.status, error_body(request_id_of(request), exc.code, exc.message), headers)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        return _respond(request, exc.status, error_body(request_id_of(request), exc.code, exc.message))

    @app.exception_handler(InvalidRequest)
    async def _invalid_request(request: Request, exc: InvalidRequest) -> JSONResponse:
        return _respond(request, 400, error_body(request_id_of(request), "invalid_request", str(exc)))

    @app.exception_handler(InvalidRef)
    async def _invalid_ref(request: Request, exc: InvalidRef) -> JSONResponse:
        return _respond(request, 400, error_body(request_id_of(request), "invalid_request", str(exc)))

    @app.exception_handler(BlobProblem)
    async def _blob_problem(request: Request, exc: BlobProblem) -> JSONResponse:
        rid = request_id_of(request)
        detail = upload_detail(exc.phase, exc.message, exc.details, rid)
        return _respond(request, 400, error_body(rid, "file_upload_error", exc.message, error_detail=detail))

    @app.exception_handler(UploadRejected)
    async def _upload_rejected(request: Request, exc: UploadRejected) -> JSONResponse:
        rid = request_id_of(request)
        detail = upload_detail("blob_upload", exc.message, {"reason": exc.reason, **exc.details}, rid)
        return _respond(request, 400, error_body(rid, "file_upload_error", exc.message, error_detail=detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        message = f"{field}: {first.get('msg', 'invalid')}".replace("Value error, ", "")
        if first.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        return _respond(request, 400, error_body(request_id_of(request), "invalid_request", message))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            code, message = "not_found", f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            allowed = allowed_methods(request)
            code, message = "invalid_request", (f"method {request.method} is not allowed on {request.url.path}; "
                                                f"allowed: {', '.join(allowed)}")
            return _respond(request, 405, error_body(request_id_of(request), code, message),
                            {**dict(exc.headers or {}), "Allow": ", ".join(allowed)})
        elif exc.status_code == 401:
            code, message = "unauthorized", str(exc.detail)
        else:
            code, message = "invalid_request", str(exc.detail)
        return _respond(request, exc.status_code, error_body(request_id_of(request), code, message),
                        dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _respond(request, 500, error_body(request_id_of(request), "internal_error",
                                                 "internal server error; the request id identifies it in the logs"))
