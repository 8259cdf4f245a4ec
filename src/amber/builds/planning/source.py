"""Which source a request describes and which backend builds it (R29, R32). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from amber.contract.images import explicit_registry
from amber.contract.request import CreateTemplateRequest
from amber.contract.sources import Backend, SourceType, dockerfile_from_images
from amber.contract.template_refs import SLUG_RE, UUID_RE

BaseRefKind = Literal["template", "oci", "ambiguous"]



def classify_base_ref(ref: str) -> BaseRefKind:
    """Does ``base_image`` name a template or an OCI image?

    ``tmpl_…``, ``nullspace/…`` and exact-build refs ``name:tb_…`` are templates; a first segment that is a
    registry host (``amber.contract.images.explicit_registry``) and bare Docker Hub names are images;
    ``ns/name[:tag]`` with a namespace-shaped first segment is *ambiguous* (``acme/app`` is also a Docker Hub
    repository) and needs the caller's template lookup.
    """
    if ref.startswith("tmpl_") or ref.startswith("nullspace/"):
        return "template"
    first, slash, rest = ref.partition("/")
    if not slash:
        _, colon, tag = ref.partition(":")
        return "template" if colon and tag.startswith("tb_") else "oci"
    if explicit_registry(ref) is not None:
        return "oci"
    if "/" in rest or "@" in rest:
        return "oci"
    if SLUG_RE.fullmatch(first) or UUID_RE.fullmatch(first):
        return "ambiguous"
    return "oci"


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

