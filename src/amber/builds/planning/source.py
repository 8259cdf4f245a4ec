"""Which source a request describes and which backend builds it (R29, R32). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from amber.contract.request import CreateTemplateRequest
from amber.contract.sources import Backend, SourceType, dockerfile_from_images
from amber.contract.template_refs import classify_base_ref


@dataclass(frozen=True)
class SourceInfo:
    source_type: SourceType
    backend: Backend
    base_ref: str  # the FROM of the plan: base_image, or the Dockerfile's last FROM image
    base_is_template: bool


def resolve_source(req: CreateTemplateRequest, *, base_is_template: bool = False) -> SourceInfo:
    """Classify a validated request (``build_plan.make_plan`` does, once per build). ``base_is_template``: the
    store resolved ``base_image`` to a template, which settles an ambiguous ``ns/name`` ref; without it such a
    ref is an OCI image.

    Non-empty ``steps`` → ``declarative``; a bare base (``steps`` absent or ``[]``, C21) → ``template_base`` or
    ``oci_import``; ``dockerfile`` → ``dockerfile``.
    """
    backend = req.effective_backend
    if req.dockerfile is not None:
        images = dockerfile_from_images(req.dockerfile)
        return SourceInfo("dockerfile", backend, images[-1] if images else "scratch", False)
    base = req.base_image or ""
    kind = classify_base_ref(base)
    is_template = kind == "template" or (kind == "ambiguous" and base_is_template)
    if req.steps:
        return SourceInfo("declarative", backend, base, is_template)
    return SourceInfo("template_base" if is_template else "oci_import", backend, base, is_template)

