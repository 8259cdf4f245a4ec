"""Template refs (R7) and the raw-path routing of the ``refs`` family (§0.6, §11). Pure functions.

A ref is one of: a raw artifact id ``tmpl_…``; ``name``; ``name:tag``; ``name:tb_…`` (exact build);
``namespace/name[:qualifier]`` where namespace is a slug (``acme``, ``nullspace``) or a legacy owner UUID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
ARTIFACT_PREFIX = "tmpl_"
BUILD_PREFIX = "tb_"
SYSTEM_NAMESPACE = "nullspace"


class InvalidRef(ValueError):
    """A ref that cannot be parsed; the message says why."""


@dataclass(frozen=True)
class TemplateRef:
    """A parsed ref. ``namespace`` None means the caller's default namespace."""

    text: str
    artifact_id: str | None = None
    namespace: str | None = None
    name: str | None = None
    qualifier: str | None = None

    @property
    def build_id(self) -> str | None:
        """The build of an exact-build ref (``name:tb_…``)."""
        if self.qualifier and self.qualifier.startswith(BUILD_PREFIX):
            return self.qualifier
        return None

    @property
    def tag(self) -> str | None:
        return None if self.qualifier is None or self.build_id else self.qualifier

    @property
    def is_builtin(self) -> bool:
        return self.namespace == SYSTEM_NAMESPACE


def check_name(name: str, field: str = "name") -> str:
    """A single-segment logical name (R2)."""
    if not NAME_RE.fullmatch(name):
        raise InvalidRef(
            f"{field} {name!r} is not a valid template name: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/' or ':')"
        )
    return name


def check_new_name(name: str, field: str = "name") -> str:
    """A name a template may take (rename, claim): like a build's ``name``, never ``tmpl_…`` (it would read as an
    artifact id) nor ``tb_…``."""
    check_name(name, field)
    if name.startswith((ARTIFACT_PREFIX, BUILD_PREFIX)):
        raise InvalidRef(f"{field} {name!r} is reserved: names may not start with {ARTIFACT_PREFIX!r} or "
                         f"{BUILD_PREFIX!r}")
    return name


def check_tag(tag: str, field: str = "tag") -> str:
    if not TAG_RE.fullmatch(tag) or tag.startswith(BUILD_PREFIX):
        raise InvalidRef(
            f"{field} {tag!r} is not a valid tag: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, not starting with 'tb_'"
        )
    return tag


def parse_ref(text: str) -> TemplateRef:
    """Parse any ref form of R7. Raises ``InvalidRef``."""
    if not text or text != text.strip():
        raise InvalidRef(f"template ref {text!r} is empty or has surrounding whitespace")
    if text.startswith(ARTIFACT_PREFIX) and "/" not in text and ":" not in text:
        if not NAME_RE.fullmatch(text):
            raise InvalidRef(f"template id {text!r} is malformed")
        return TemplateRef(text=text, artifact_id=text)
    namespace: str | None = None
    rest = text
    if "/" in text:
        namespace, _, rest = text.partition("/")
        if "/" in rest:
            raise InvalidRef(f"template ref {text!r} has more than one '/': use 'namespace/name[:tag]'")
        if not (SLUG_RE.fullmatch(namespace) or UUID_RE.fullmatch(namespace)):
            raise InvalidRef(f"template ref {text!r} has an invalid namespace {namespace!r}")
    name, sep, qualifier = rest.partition(":")
    check_name(name)
    if sep:
        if not qualifier:
            raise InvalidRef(f"template ref {text!r} has an empty tag")
        if not qualifier.startswith(BUILD_PREFIX):
            check_tag(qualifier)
        elif not NAME_RE.fullmatch(qualifier):
            raise InvalidRef(f"template ref {text!r} has a malformed build id")
    return TemplateRef(text=text, namespace=namespace, name=name, qualifier=qualifier if sep else None)


def is_syntactic_ref(text: str) -> bool:
    try:
        parse_ref(text)
    except InvalidRef:
        return False
    return True


# -- raw-path routing -------------------------------------------------------------------------------------------

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
