"""The one reader of JSON request bodies: a size limit and a nesting limit before any route parses a byte.

``JsonBodyMiddleware`` stands between every route (present or added later: machines, warm pools) and the
connection. When a route reads its body, it gets the whole body in one piece once these hold, or an error:

- larger than ``Settings.max_json_body_bytes`` → **413** ``invalid_request`` (checked against ``Content-Length``
  first, then while reading; the rest of a declared body, up to ``_DRAIN_LIMIT``, is read and dropped so the
  client sees the answer rather than a reset connection);
- nested deeper than ``Settings.max_json_depth`` arrays/objects → **400** ``invalid_request`` saying so
  (measured on the raw text outside strings: a 100,000-deep body costs one linear scan, never a recursion).

This applies whatever the ``Content-Type`` (routes parse such bodies as JSON anyway). Everything else, text that
is not JSON included, reaches the route unchanged, which parses and answers as the contract says (``/validate``
reports problems as data). Unknown keys are the models' business: only declared fields are ever stored.

Opting out: a route whose OpenAPI ``requestBody`` declares no JSON media type reads its body itself, outside
these limits — blob uploads (``openapi_extra=raw_body_openapi("application/octet-stream")``), raw file uploads,
and routes with ``File``/``Form`` parameters (multipart, detected from the route). Such a route enforces its own
limit (``max_blob_bytes`` for blobs). The route is known once the router has chosen it (``scope["route"]``),
which is before any body byte is read, so nothing is read for a request no route takes (404/405).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from fastapi import Request, params
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amber.contract.errors import InvalidRequest

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_INLINE_SCAN = 64 * 1024  # larger bodies are scanned in a worker thread (~0.1 s per MiB at worst)
_DRAIN_LIMIT = 1024**3  # an oversized body is read and dropped up to this much, then the connection closes
# A JSON string, or an unterminated one running to the end: every '"' starts a match that consumes what it
# scans, so stripping strings stays linear whatever the text.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*\\?(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def json_depth(body: bytes) -> int:
    """How deeply ``body`` nests arrays and objects (``[]`` is 1, ``{"a": [1]}`` is 2), counting brackets outside
    JSON strings; for text that is not JSON, a bound the parser would reach first. Linear, no recursion."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    openers = brackets.count(b"[") + brackets.count(b"{")
    if openers <= 1:
        return openers
    return max(accumulate(_STEP[b] for b in brackets))


def raw_body_openapi(*media_types: str) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads its own (non-JSON) body: documents it, and opts the route out of
    the JSON reader."""
    return {"requestBody": {"required": True, "content": {
        media: {"schema": {"type": "string", "format": "binary"}} for media in media_types}}}


def json_body_openapi(schema: str, *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads a JSON body itself (``read_json``): documents the body as the
    contract's ``schema`` (by name) and keeps the route under the JSON reader's limits."""
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": {
        "type": "object", "title": schema, "additionalProperties": True}}}}}


def declared_media_types(route: APIRoute) -> list[str]:
    """The request body media types a route declares: its ``openapi_extra`` requestBody, else multipart/form for
    ``File``/``Form`` parameters, else JSON."""
    content = (route.openapi_extra or {}).get("requestBody", {}).get("content")
    if isinstance(content, dict) and content:
        return [str(media) for media in content]
    field = route.body_field
    if field is not None and isinstance(field.field_info, params.Form):
        return [str(field.field_info.media_type)]
    return ["application/json"]


def reads_json(route: APIRoute) -> bool:
    return any(_is_json(media) for media in declared_media_types(route))


def _is_json(media: str) -> bool:
    media = media.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodyRefused(HTTPException):
    """A JSON body over a limit: raised to the route that reads it, answered by the API's error handler."""


class JsonBodyMiddleware:
    """Pure ASGI (responses, SSE included, pass straight through): it only wraps ``receive``."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        await self.app(scope, _JsonReceive(self, scope, receive), send)


class _JsonReceive:
    """``receive`` for one request: on the first read, the route decides between raw and limited JSON."""

    def __init__(self, limits: JsonBodyMiddleware, scope: Scope, receive: Receive) -> None:
        self.limits = limits
        self.scope = scope
        self.receive = receive
        self.state = "new"  # new → raw | delivered

    async def __call__(self) -> Message:
        if self.state == "new":
            route = self.scope.get("route")
            if isinstance(route, APIRoute) and not reads_json(route):
                self.state = "raw"
            else:
                self.state = "delivered"
                return {"type": "http.request", "body": await self._read_json(), "more_body": False}
        return await self.receive()

    async def _read_json(self) -> bytes:
        max_bytes, max_depth = self.limits.max_bytes, self.limits.max_depth
        declared = _content_length(self.scope["headers"])
        if declared is not None and declared > max_bytes:
            if declared <= _DRAIN_LIMIT:
                await _drain(self.receive, declared)
            raise BodyRefused(413, _too_large(max_bytes))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            size += len(chunk)
            if size > max_bytes:
                if more:
                    await _drain(self.receive, _DRAIN_LIMIT - size)
                raise BodyRefused(413, _too_large(max_bytes))
            chunks.append(chunk)
            if not more:
                break
        body = b"".join(chunks)
        depth = json_depth(body) if len(body) <= _INLINE_SCAN else await asyncio.to_thread(json_depth, body)
        if depth > max_depth:
            raise BodyRefused(400, f"request body nests arrays/objects {depth} levels deep; at most {max_depth} "
                                   "are allowed (AMBER_MAX_JSON_DEPTH)")
        return body


def _too_large(max_bytes: int) -> str:
    return f"request body is larger than the {max_bytes}-byte limit for JSON requests (AMBER_MAX_JSON_BODY_BYTES)"


async def _drain(receive: Receive, budget: int) -> None:
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_json(request: Request, *, required: bool = True) -> Any:
    """The request's JSON body, decoded (after the middleware's limits); None when it is empty and not
    ``required``. A missing or undecodable body is 400 ``invalid_request``."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise InvalidRequest("body", "request body is required (a JSON object)")
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidRequest("body", "request body is not valid JSON") from None
