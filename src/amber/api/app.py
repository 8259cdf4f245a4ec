"""The FastAPI application: routes, error bodies, middleware, and (in ``lifespan``) the build workers.

``create_app(settings)`` migrates nothing; ``amber serve`` runs the migrations first. With ``workers=0`` the
app runs no builds (useful for API-only tests and several API processes in front of separate workers).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from amber.api.deps import AppState
from amber.api.errors import install_error_handlers
from amber.api.middleware import RefsRoutingMiddleware, RequestIdMiddleware
from amber.api.routes import blobs, builds, templates
from amber.blobs.store import BlobStore
from amber.buildkit.daemon import stop_managed_dockerds
from amber.builds.logbus import LogBus
from amber.builds.service import BuildService
from amber.builds.workers import WorkerPool, load_executor
from amber.contract.errors import InvalidRef
from amber.contract.request import CreateTemplateRequest
from amber.contract.template_refs import parse_ref
from amber.settings import Settings
from amber.store import catalog
from amber.store.database import Database

log = logging.getLogger("amber.api")


def create_app(settings: Settings, *, workers: int | None = None) -> FastAPI:
    """The app for ``settings``. ``workers`` overrides ``settings.resolved_workers`` (0 = no build workers)."""
    db = Database(settings.resolved_database_url)
    blob_store = BlobStore(settings.blobs_dir)
    service = BuildService(db, settings, LogBus(), blob_store)
    state = AppState(settings=settings, db=db, blobs=blob_store, builds=service)
    count = settings.resolved_workers if workers is None else workers

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ended = await service.recover()
        if ended:
            log.warning("ended %d build(s) left running by a previous server: %s", len(ended), ", ".join(ended))
        pool = WorkerPool(service, count, load_executor(settings) if count else None)
        if count:
            pool.start()
        try:
            yield
        finally:
            await pool.stop()
            await stop_managed_dockerds()  # engineer D: the dockerd Dockerfile builds started must not outlive us
            db.dispose()

    app = FastAPI(
        title="Amber template API",
        version="1.0.3",
        description="Self-hosted implementation of the Nullspace template HTTP API (nullspace-sdk 1.0.3).",
        lifespan=lifespan,
    )
    app.state.amber = state
    install_error_handlers(app)
    app.include_router(builds.router)
    app.include_router(blobs.router)
    app.include_router(templates.router)

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

    app.add_middleware(RefsRoutingMiddleware, ref_exists=ref_exists)
    app.add_middleware(RequestIdMiddleware)

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
