"""Phase ``base`` (log phase ``preparing``): the root disk a build starts from, by the plan's base kind.

- ``oci``: an OCI image, resolved with this build's credentials on every build (the access check), imported
  once per manifest digest;
- ``dockerfile``: BuildKit builds the target as an image; its tree becomes a disk cached by image ID;
- ``template``: a parent template's disk chain (hard links), cached by the parent artifact's manifest.
Each is one ``CachedRunner`` entry (kind ``layer``, what ``base disk``); its image config gives the runtime
defaults (``BaseImage.defaults``).
"""

from __future__ import annotations

from amber.builds.pipeline.attempt import Attempt, BaseImage
from amber.builds.pipeline.phases.base.dockerfile import dockerfile_base
from amber.builds.pipeline.phases.base.oci import oci_base
from amber.builds.pipeline.phases.base.template import template_base


async def prepare_base(attempt: Attempt) -> BaseImage:
    decision, _, _ = attempt.plan.cache_decisions()
    kind = attempt.plan.base_kind
    if kind == "dockerfile":
        return await dockerfile_base(attempt, decision)
    if kind == "template":
        return await template_base(attempt, decision)
    return await oci_base(attempt, decision)


__all__ = ["prepare_base"]
