"""The raw-path routing of the ``refs`` family (§0.6, §11): which readings a ``/v1/templates/refs/…`` path has.
Pure. The refs themselves are ``amber.contract.template_refs``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from amber.contract.template_refs import is_syntactic_ref

REFS_PREFIX = "/v1/templates/refs/"
_SUBRESOURCES: dict[str, tuple[str, ...]] = {
    # method -> (sub-resource without argument, ...)
    "GET": ("tags", "aliases", "builds"),
    "POST": ("tags", "rename"),
    "PATCH": ("visibility",),
}
_SUBRESOURCES_WITH_ARG: dict[str, tuple[str, ...]] = {"DELETE": ("tags", "aliases")}


@dataclass(frozen=True)
class RefRoute:
    """One reading of a ``refs`` path: the ref, an optional sub-resource and its argument."""

    ref: str
    sub: str | None = None
    arg: str | None = None

    def internal_path(self) -> str:
        """The path the router sees: the ref (and argument) as one percent-encoded segment each."""
        path = REFS_PREFIX + quote(self.ref, safe="")
        if self.sub:
            path += "/" + self.sub
        if self.arg is not None:
            path += "/" + quote(self.arg, safe="")
        return path


def route_candidates(method: str, raw_rest: str) -> list[RefRoute]:
    """Every reading of ``raw_rest`` (the still-encoded path after ``/v1/templates/refs/``) for ``method``,
    most specific first by R8: the whole path as a ref, then the sub-resource readings. Segments are split on
    the raw ``/`` and percent-decoded afterwards, so ``%2F`` never splits (§0.6)."""
    segments = [unquote(s) for s in raw_rest.split("/")]
    if not segments or any(s == "" for s in segments):
        return []
    out: list[RefRoute] = []
    whole = "/".join(segments)
    if method in ("GET", "DELETE") and is_syntactic_ref(whole):
        out.append(RefRoute(ref=whole))
    for count in range(1, len(segments)):
        ref = "/".join(segments[:count])
        tail = segments[count:]
        if len(tail) == 1 and tail[0] in _SUBRESOURCES.get(method, ()):
            out.append(RefRoute(ref=ref, sub=tail[0]))
        if len(tail) == 2 and tail[0] in _SUBRESOURCES_WITH_ARG.get(method, ()):
            out.append(RefRoute(ref=ref, sub=tail[0], arg=tail[1]))
    if not out and len(segments) == 1:
        out.append(RefRoute(ref=segments[0]))  # lets the handler report the malformed ref as 400
    return out
