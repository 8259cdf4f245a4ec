"""Template management: #15-#35 in both forms — ``/v1/templates/{id}/…`` and ``/v1/templates/refs/{ref}/…``
(the ``refs`` path arrives percent-encoded from ``RefsRoutingMiddleware`` and is decoded here) — plus
claims (#13, #14) and namespaces (#36)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from amber.api.deps import AppState, app_state, current_caller
from amber.api.fields import apply_fields, parse_fields
from amber.api.schemas.responses import (
    ErrorResponse,
    TemplateAliasInfo,
    TemplateBuildListResponse,
    TemplateInfo,
    TemplateNameClaim,
    TemplateNamespaceInfo,
    TemplateTagInfo,
)
from amber.builds.views import template_info, ts
from amber.contract.catalog import (
    AssignTagsRequest,
    RenameTemplateRequest,
    ReserveTemplateNameRequest,
    UpdateTemplateVisibilityRequest,
)
from amber.contract.errors import InvalidRef, InvalidRequest
from amber.contract.sources import Backend, SourceType
from amber.contract.status import BuildStatus
from amber.contract.template_refs import TemplateRef, check_new_name, check_tag, parse_ref
from amber.store import builds as store_builds
from amber.store import catalog
from amber.store.keys import Caller

router = APIRouter(prefix="/v1/templates", tags=["templates"])
T = TypeVar("T")
_CURSOR_RE = re.compile(r"tb_[0-9a-z]+")  # next_cursor is the last build id of the page

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
    409: {"model": ErrorResponse}, 501: {"model": ErrorResponse},
}


def _json(body: Any, status: int = 200) -> Response:
    return JSONResponse(_plain(body), status_code=status)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "strftime"):
        return ts(value)
    return value


async def _in_session(state: AppState, fn: Callable[[Session], T]) -> T:
    return await state.db.run(fn)


async def _reading(state: AppState, fn: Callable[[Session], T]) -> T:
    return await state.db.read(fn)


def _no_builtin(ref: TemplateRef, what: str) -> None:
    if ref.is_builtin:
        raise InvalidRequest("ref", f"builtin template {ref.text!r}: {what}")


# -- handlers shared by the {id} and refs forms -------------------------------------------------------------------


async def _get(state: AppState, caller: Caller, text: str, fields: str | None) -> Response:
    ref = parse_ref(text)
    mask = parse_fields(fields)

    def read(session: Session) -> dict[str, Any]:
        resolved = catalog.resolve(session, caller, ref)
        return apply_fields(template_info(session, resolved), mask)

    return _json(await _reading(state, read))


async def _delete(state: AppState, caller: Caller, text: str) -> Response:
    ref = parse_ref(text)
    _no_builtin(ref, "builtin templates cannot be deleted")
    query = ref
    whole_template = ref.qualifier is None

    def active_builds(session: Session) -> list[str]:
        resolved = catalog.resolve(session, caller, query, write=True)
        if not whole_template:
            return []
        return store_builds.active_build_ids(session, resolved.template.id)

    for build_id in await _in_session(state, active_builds):
        await state.builds.cancel(caller, build_id, "template deleted")

    def remove(session: Session) -> list[str]:
        resolved = catalog.resolve(session, caller, query, write=True)
        if whole_template:
            return catalog.delete_template(session, resolved.template)
        artifact = catalog.require_artifact(resolved, text)
        return [catalog.delete_artifact(session, artifact)]

    dirs = await _in_session(state, remove)
    await asyncio.to_thread(state.builds.artifact_dirs_removed, dirs)
    return Response(status_code=204)


async def _rename(state: AppState, caller: Caller, text: str, body: RenameTemplateRequest) -> Response:
    ref = parse_ref(text)
    try:
        check_new_name(body.new_name, "new_name")
    except InvalidRef as exc:
        raise InvalidRequest("new_name", str(exc)) from None

    def write(session: Session) -> dict[str, Any]:
        resolved = catalog.resolve(session, caller, ref, write=True)
        catalog.rename(session, resolved.namespace, resolved.template, body.new_name)
        return template_info(session, resolved)

    return _json(await _in_session(state, write))


async def _assign_tags(state: AppState, caller: Caller, text: str, body: AssignTagsRequest) -> Response:
    ref = parse_ref(text)
    if not body.tags:
        raise InvalidRequest("tags", "must be a non-empty array")
    for index, tag in enumerate(body.tags):
        try:
            check_tag(tag, f"tags[{index}]")
        except InvalidRef as exc:
            raise InvalidRequest(f"tags[{index}]", str(exc)) from None

    def write(session: Session) -> dict[str, Any]:
        resolved = catalog.resolve(session, caller, ref, write=True)
        artifact = catalog.require_artifact(resolved, text)
        for tag in dict.fromkeys(body.tags):
            catalog.move_tag(session, resolved.template, tag, artifact)
        session.flush()
        return template_info(session, resolved)

    return _json(await _in_session(state, write))


async def _list_tags(state: AppState, caller: Caller, text: str) -> Response:
    ref = parse_ref(text)
    _no_builtin(ref, "tags of builtin templates cannot be listed (the default tag is the canonical pin)")

    def read(session: Session) -> list[dict[str, Any]]:
        resolved = catalog.resolve(session, caller, ref)
        return catalog.list_tags(session, resolved.template)

    return _json(await _reading(state, read))


async def _remove_tag(state: AppState, caller: Caller, text: str, tag: str) -> Response:
    ref = parse_ref(text)
    _no_builtin(ref, "tags of builtin templates cannot be changed")

    def write(session: Session) -> None:
        resolved = catalog.resolve(session, caller, ref, write=True)
        catalog.remove_tag(session, resolved.template, tag)

    await _in_session(state, write)
    return Response(status_code=204)


async def _list_aliases(state: AppState, caller: Caller, text: str) -> Response:
    ref = parse_ref(text)

    def read(session: Session) -> list[dict[str, Any]]:
        resolved = catalog.resolve(session, caller, ref)
        return catalog.list_aliases(session, resolved.namespace, resolved.template)

    return _json(await _reading(state, read))


async def _remove_alias(state: AppState, caller: Caller, text: str, alias: str) -> Response:
    ref = parse_ref(text)

    def write(session: Session) -> None:
        resolved = catalog.resolve(session, caller, ref, write=True)
        catalog.remove_alias(session, resolved.namespace, resolved.template, alias)

    await _in_session(state, write)
    return Response(status_code=204)


async def _visibility(state: AppState, caller: Caller, text: str, body: UpdateTemplateVisibilityRequest) -> Response:
    ref = parse_ref(text)
    _no_builtin(ref, "visibility of builtin templates cannot be changed")

    def write(session: Session) -> dict[str, Any]:
        resolved = catalog.resolve(session, caller, ref, write=True)
        resolved.template.visibility = str(body.visibility.value)
        return template_info(session, resolved)

    return _json(await _in_session(state, write))


async def _builds(state: AppState, caller: Caller, text: str, status: BuildStatus | None,
                  backend: Backend | None, source_type: SourceType | None, limit: int,
                  cursor: str | None) -> Response:
    ref = parse_ref(text)
    if cursor is not None and not _CURSOR_RE.fullmatch(cursor):
        raise InvalidRequest("cursor", f"{cursor!r} is not a cursor from this listing: pass next_cursor back verbatim")
    result = await state.builds.list_builds(
        caller, ref, status=status.value if status else None, backend=backend,
        source_type=source_type, limit=limit, cursor=cursor)
    return _json(result)


# -- static routes: claims and namespaces -------------------------------------------------------------------------


@router.post("/claims", status_code=201, response_model=TemplateNameClaim, responses=_ERRORS,
             summary="Reserve a template name in the caller's default namespace")
async def reserve_template_name(body: ReserveTemplateNameRequest, caller: Caller = Depends(current_caller),
                                state: AppState = Depends(app_state)) -> Response:
    text = body.template_ref
    namespace, slash, name = text.rpartition("/")
    if slash and namespace != caller.namespace_slug and namespace.lower() != caller.namespace_id:  # slug or UUID
        raise InvalidRequest("template_ref", f"claims cover your default namespace {caller.namespace_slug!r}, "
                                             f"not {namespace!r}")
    if ":" in name:
        raise InvalidRequest("template_ref", "a claim names a template, not a tag: use 'name' or 'namespace/name'")
    try:
        check_new_name(name, "template_ref")
    except InvalidRef as exc:
        raise InvalidRequest("template_ref", str(exc)) from None
    ttl = state.settings.claim_ttl_secs
    claim = await _in_session(state, lambda s: catalog.reserve_name(s, caller, name, ttl))
    return _json(claim, 201)


@router.delete("/claims/{claim_token}", status_code=204, responses=_ERRORS, summary="Release a name claim")
async def release_template_name_claim(claim_token: str, caller: Caller = Depends(current_caller),
                                      state: AppState = Depends(app_state)) -> Response:
    await _in_session(state, lambda s: catalog.release_claim(s, caller, claim_token))
    return Response(status_code=204)


@router.get("/namespaces/{slug}", response_model=TemplateNamespaceInfo, responses=_ERRORS,
            summary="Namespace metadata")
async def get_template_namespace(slug: str, caller: Caller = Depends(current_caller),
                                 state: AppState = Depends(app_state)) -> Response:
    def read(session: Session) -> dict[str, Any]:
        ns = catalog.visible_namespace(session, caller, slug)
        return {"slug": ns.slug, "kind": ns.kind, "is_default": ns.id == caller.namespace_id}

    return _json(await _reading(state, read))


@router.get("", response_model=list[TemplateInfo], responses=_ERRORS, summary="List visible templates")
async def list_templates(fields: str | None = None, caller: Caller = Depends(current_caller),
                         state: AppState = Depends(app_state)) -> Response:
    mask = parse_fields(fields)

    def read(session: Session) -> list[dict[str, Any]]:
        return [apply_fields(template_info(session, r), mask) for r in catalog.list_templates(session, caller)]

    return _json(await _reading(state, read))


# -- refs form ----------------------------------------------------------------------------------------------------


@router.get("/refs/{ref}", response_model=TemplateInfo, responses=_ERRORS, summary="Get a template by ref")
async def get_template_by_ref(ref: str, fields: str | None = None, caller: Caller = Depends(current_caller),
                              state: AppState = Depends(app_state)) -> Response:
    return await _get(state, caller, unquote(ref), fields)


@router.delete("/refs/{ref}", status_code=204, responses=_ERRORS, summary="Delete a template by ref")
async def delete_template_by_ref(ref: str, caller: Caller = Depends(current_caller),
                                 state: AppState = Depends(app_state)) -> Response:
    return await _delete(state, caller, unquote(ref))


@router.post("/refs/{ref}/rename", response_model=TemplateInfo, responses=_ERRORS, summary="Rename by ref")
async def rename_template_by_ref(ref: str, body: RenameTemplateRequest, caller: Caller = Depends(current_caller),
                                 state: AppState = Depends(app_state)) -> Response:
    return await _rename(state, caller, unquote(ref), body)


@router.post("/refs/{ref}/tags", response_model=TemplateInfo, responses=_ERRORS, summary="Assign tags by ref")
async def assign_template_tags_by_ref(ref: str, body: AssignTagsRequest, caller: Caller = Depends(current_caller),
                                      state: AppState = Depends(app_state)) -> Response:
    return await _assign_tags(state, caller, unquote(ref), body)


@router.get("/refs/{ref}/tags", response_model=list[TemplateTagInfo], responses=_ERRORS, summary="List tags by ref")
async def list_template_tags_by_ref(ref: str, caller: Caller = Depends(current_caller),
                                    state: AppState = Depends(app_state)) -> Response:
    return await _list_tags(state, caller, unquote(ref))


@router.delete("/refs/{ref}/tags/{tag}", status_code=204, responses=_ERRORS, summary="Remove a tag by ref")
async def remove_template_tag_by_ref(ref: str, tag: str, caller: Caller = Depends(current_caller),
                                     state: AppState = Depends(app_state)) -> Response:
    return await _remove_tag(state, caller, unquote(ref), unquote(tag))


@router.get("/refs/{ref}/aliases", response_model=list[TemplateAliasInfo], responses=_ERRORS,
            summary="List aliases by ref")
async def list_template_aliases_by_ref(ref: str, caller: Caller = Depends(current_caller),
                                       state: AppState = Depends(app_state)) -> Response:
    return await _list_aliases(state, caller, unquote(ref))


@router.delete("/refs/{ref}/aliases/{alias}", status_code=204, responses=_ERRORS, summary="Remove an alias by ref")
async def remove_template_alias_by_ref(ref: str, alias: str, caller: Caller = Depends(current_caller),
                                       state: AppState = Depends(app_state)) -> Response:
    return await _remove_alias(state, caller, unquote(ref), unquote(alias))


@router.patch("/refs/{ref}/visibility", response_model=TemplateInfo, responses=_ERRORS,
              summary="Set visibility by ref")
async def update_template_visibility_by_ref(ref: str, body: UpdateTemplateVisibilityRequest,
                                            caller: Caller = Depends(current_caller),
                                            state: AppState = Depends(app_state)) -> Response:
    return await _visibility(state, caller, unquote(ref), body)


@router.get("/refs/{ref}/builds", response_model=TemplateBuildListResponse, responses=_ERRORS,
            summary="Build history by ref")
async def list_template_builds_by_ref(ref: str, status: BuildStatus | None = None,
                                      backend: Backend | None = None, source_type: SourceType | None = None,
                                      limit: int = Query(50, ge=1, le=100), cursor: str | None = None,
                                      caller: Caller = Depends(current_caller),
                                      state: AppState = Depends(app_state)) -> Response:
    return await _builds(state, caller, unquote(ref), status, backend, source_type, limit, cursor)


# -- {id} form (raw ids and unnamespaced refs; registered last so static segments win) ----------------------------


@router.post("/{id}/rename", response_model=TemplateInfo, responses=_ERRORS, summary="Rename")
async def rename_template(id: str, body: RenameTemplateRequest, caller: Caller = Depends(current_caller),
                          state: AppState = Depends(app_state)) -> Response:
    return await _rename(state, caller, id, body)


@router.post("/{id}/tags", response_model=TemplateInfo, responses=_ERRORS, summary="Assign tags")
async def assign_template_tags(id: str, body: AssignTagsRequest, caller: Caller = Depends(current_caller),
                               state: AppState = Depends(app_state)) -> Response:
    return await _assign_tags(state, caller, id, body)


@router.get("/{id}/tags", response_model=list[TemplateTagInfo], responses=_ERRORS, summary="List tags")
async def list_template_tags(id: str, caller: Caller = Depends(current_caller),
                             state: AppState = Depends(app_state)) -> Response:
    return await _list_tags(state, caller, id)


@router.delete("/{id}/tags/{tag}", status_code=204, responses=_ERRORS, summary="Remove a tag")
async def remove_template_tag(id: str, tag: str, caller: Caller = Depends(current_caller),
                              state: AppState = Depends(app_state)) -> Response:
    return await _remove_tag(state, caller, id, tag)


@router.get("/{id}/aliases", response_model=list[TemplateAliasInfo], responses=_ERRORS, summary="List aliases")
async def list_template_aliases(id: str, caller: Caller = Depends(current_caller),
                                state: AppState = Depends(app_state)) -> Response:
    return await _list_aliases(state, caller, id)


@router.delete("/{id}/aliases/{alias}", status_code=204, responses=_ERRORS, summary="Remove an alias")
async def remove_template_alias(id: str, alias: str, caller: Caller = Depends(current_caller),
                                state: AppState = Depends(app_state)) -> Response:
    return await _remove_alias(state, caller, id, alias)


@router.patch("/{id}/visibility", response_model=TemplateInfo, responses=_ERRORS, summary="Set visibility")
async def update_template_visibility(id: str, body: UpdateTemplateVisibilityRequest,
                                     caller: Caller = Depends(current_caller),
                                     state: AppState = Depends(app_state)) -> Response:
    return await _visibility(state, caller, id, body)


@router.get("/{id}/builds", response_model=TemplateBuildListResponse, responses=_ERRORS, summary="Build history")
async def list_template_builds(id: str, status: BuildStatus | None = None, backend: Backend | None = None,
                               source_type: SourceType | None = None, limit: int = Query(50, ge=1, le=100),
                               cursor: str | None = None, caller: Caller = Depends(current_caller),
                               state: AppState = Depends(app_state)) -> Response:
    return await _builds(state, caller, id, status, backend, source_type, limit, cursor)


@router.get("/{id}", response_model=TemplateInfo, responses=_ERRORS, summary="Get a template")
async def get_template(id: str, fields: str | None = None, caller: Caller = Depends(current_caller),
                       state: AppState = Depends(app_state)) -> Response:
    return await _get(state, caller, id, fields)


@router.delete("/{id}", status_code=204, responses=_ERRORS, summary="Delete a template")
async def delete_template(id: str, caller: Caller = Depends(current_caller),
                          state: AppState = Depends(app_state)) -> Response:
    return await _delete(state, caller, id)
