"""Every JSON body the server sends validates against the response model its OpenAPI document names (so the
document and the wire agree), and carries no ``null`` values (the SDK's generated models reject them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from amber.api.schemas.responses import (
    TemplateAliasInfo,
    TemplateBlobPreflightResponse,
    TemplateBuild,
    TemplateBuildListResponse,
    TemplateBuildStatusSnapshot,
    TemplateInfo,
    TemplateNameClaim,
    TemplateNamespaceInfo,
    TemplateTagInfo,
)
from tests.api.conftest import Api
from tests.api.test_blobs_and_errors import descriptor
from tests.api.test_builds import BASE
from tests.api.test_catalog import enc, unique
from tests.support.seed import seed_template


def no_nulls(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert item is not None, f"{key} is null"
            no_nulls(item)
    elif isinstance(value, list):
        for item in value:
            no_nulls(item)


def check(model: type[BaseModel] | TypeAdapter[Any], body: Any) -> None:
    no_nulls(body)
    if isinstance(model, TypeAdapter):
        model.validate_python(body)
    else:
        model.model_validate(body)


def test_bodies_match_their_models(api: Api) -> None:
    name = unique("models")
    seeded = seed_template(api.database_url, "acme", name, ["stable"])
    api.acme.post(f"/v1/templates/refs/{enc(name)}/rename", json={"new_name": name + "-x"})
    ref = enc(f"acme/{name}-x")
    check(TemplateInfo, api.acme.get(f"/v1/templates/refs/{ref}").json())
    check(TypeAdapter(list[TemplateInfo]), api.acme.get("/v1/templates").json())
    check(TypeAdapter(list[TemplateTagInfo]), api.acme.get(f"/v1/templates/refs/{ref}/tags").json())
    check(TypeAdapter(list[TemplateAliasInfo]), api.acme.get(f"/v1/templates/refs/{ref}/aliases").json())
    check(TemplateBuildListResponse, api.acme.get(f"/v1/templates/refs/{ref}/builds").json())
    check(TemplateNamespaceInfo, api.acme.get("/v1/templates/namespaces/acme").json())
    check(TemplateNameClaim, api.acme.post("/v1/templates/claims", json={"template_ref": unique("c")}).json())
    check(TemplateInfo, api.acme.post(f"/v1/templates/builds/{seeded.build_id}/promote", json={"tag": "p"}).json())
    preflight = api.acme.post("/v1/templates/blobs/preflight", json={"files": [descriptor("a", b"a")]}).json()
    check(TemplateBlobPreflightResponse, preflight)
    build = api.acme.post("/v1/templates/builds", json={"name": unique("m"), "base_image": BASE}).json()
    check(TemplateBuild, build)
    check(TemplateBuildStatusSnapshot, api.acme.get(f"/v1/templates/builds/{build['build_id']}").json())
    cancelled = api.acme.post(f"/v1/templates/builds/{build['build_id']}/cancel", json={}).json()
    check(TemplateBuildStatusSnapshot, cancelled)
    retried = api.acme.post(f"/v1/templates/builds/{build['build_id']}/retry", json={}).json()
    check(TemplateBuild, retried)
    api.acme.post(f"/v1/templates/builds/{retried['build_id']}/cancel", json={})
