"""Pure ASGI middleware (no response buffering, so SSE streams pass straight through).

``RequestIdMiddleware`` gives every request an id (``scope["state"]["request_id"]``, ``x-request-id`` header).
``RefsRoutingMiddleware`` routes the ``/v1/templates/refs/…`` family on the *raw* path (§0.6, §11): it splits
on ``/`` before percent-decoding, picks the reading R8 prescribes, and hands the router a path in which the
ref (and a tag/alias argument) is one percent-encoded segment; handlers decode it with ``unquote``.
The ``{id}`` family (R9) gets the same treatment when its id segment holds an encoded ``/`` (``%2F``): such an
id is a namespaced ref, so ``/v1/templates/acme%2Fapp%3Astable/tags`` is served as the refs route it names
instead of falling apart into path segments after decoding; likewise ``{id}/aliases/{alias}`` whose alias is a
listed ``namespace/name`` (``/v1/templates/tmpl_x/aliases/acme%2Fold``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amber.api.refs import REFS_PREFIX, route_candidates
from amber.store.ids import request_id

TEMPLATES_PREFIX = "/v1/templates/"

RefExists = Callable[[str, str], Awaitable[bool]]  # (ref, Authorization header) -> names a readable template


def _encoded_alias_arg(segments: list[str]) -> bool:
    """``{id}/aliases/{alias}`` with the alias as listed (``acme%2Fold``): an encoded ``/`` the router would split."""
    return len(segments) == 3 and segments[1] == "aliases" and "%2f" in segments[2]


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id()
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


class RefsRoutingMiddleware:
    def __init__(self, app: ASGIApp, ref_exists: RefExists) -> None:
        self.app = app
        self.ref_exists = ref_exists

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw: bytes = scope.get("raw_path") or scope["path"].encode()
            raw_path = raw.decode("latin-1").split("?", 1)[0]
            if raw_path.startswith(REFS_PREFIX):
                scope = await self._rewrite(scope, raw_path[len(REFS_PREFIX):])
            elif raw_path.startswith(TEMPLATES_PREFIX):
                rest = raw_path[len(TEMPLATES_PREFIX):]
                segments = rest.lower().split("/")
                if "%2f" in segments[0] or _encoded_alias_arg(segments):
                    scope = await self._rewrite(scope, rest)
        await self.app(scope, receive, send)

    async def _rewrite(self, scope: Scope, rest: str) -> Scope:
        candidates = route_candidates(scope["method"], rest)
        if not candidates:
            return scope
        chosen = candidates[0]
        authorization = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), "")
        if len(candidates) > 1 and chosen.sub is None and not await self.ref_exists(chosen.ref, authorization):
            chosen = candidates[1]  # R8: the whole path is a ref only if it names a template
        path = chosen.internal_path()
        new: dict[str, Any] = dict(scope)
        new["path"] = path
        new["raw_path"] = path.encode()
        return new
