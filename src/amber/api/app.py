"""The FastAPI application: routes, error bodies, middleware and the OpenAPI document, over an ``AppState``.

``create_app(state)`` builds no subsystem and starts nothing: the composition root (``amber.server``) makes the
database, services and workers, and passes their start/stop as ``lifespan``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from amber.api.body import JsonBodyMiddleware
from amber.api.deps import AppState
from amber.api.errors import install_error_handlers
from amber.api.middleware import RefsRoutingMiddleware, RequestIdMiddleware
from amber.api.preview import PreviewProxyMiddleware
from amber.api.routes import (
    blobs,
    builds,
    machine_files,
    machine_ws,
    machines,
    snapshots,
    templates,
    unimplemented,
    warm_pools,
)
from amber.contract.errors import InvalidRef
from amber.contract.request import CreateTemplateRequest
from amber.contract.template_refs import parse_ref
from amber.store import catalog

log = logging.getLogger("amber.api")

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(state: AppState, *, lifespan: Lifespan | None = None) -> FastAPI:
    """The HTTP app over ``state`` (routes, middleware, error bodies, OpenAPI). What runs beside it (build workers,
    dockerd, machines) is the composition root's, ``amber.server``; ``lifespan`` is how it starts and stops."""
    db = state.db

    app = FastAPI(
        title="Amber API",
        version="1.0.3",
        description="Self-hosted implementation of the Nullspace template and machine HTTP APIs (nullspace-sdk 1.0.3).",
        lifespan=lifespan,
    )
    app.state.amber = state
    install_error_handlers(app)
    app.include_router(builds.router)
    app.include_router(blobs.router)
    app.include_router(templates.router)
    app.include_router(machines.router)
    app.include_router(machine_files.router)
    app.include_router(machine_ws.router)
    app.include_router(snapshots.router)
    app.include_router(warm_pools.router)
    app.include_router(unimplemented.router)  # last: the families this server does not offer

    async def ref_exists(text: str, authorization: str) -> bool:
        """Does ``text`` name a template the request's caller can read? (R8; another namespace's private
        template never changes how a path is read, so routing reveals nothing.)"""
        try:
            ref = parse_ref(text)
        except InvalidRef:
            return False
        if ref.name is None or ref.namespace is None:
            return False
        namespace, name = ref.namespace, ref.name
        scheme, _, key = authorization.partition(" ")
        caller = await state.caller_for(key.strip()) if scheme.lower() == "bearer" and key.strip() else None

        return await db.read(lambda session: catalog.readable_by_name(session, namespace, name, caller))

    settings = state.settings
    app.add_middleware(JsonBodyMiddleware, max_bytes=settings.max_json_body_bytes, max_depth=settings.max_json_depth)
    app.add_middleware(RefsRoutingMiddleware, ref_exists=ref_exists)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(PreviewProxyMiddleware, manager=lambda: state.machines, caller_for=state.caller_for)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            request_schema = CreateTemplateRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in request_schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components["CreateTemplateRequest"] = request_schema
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
