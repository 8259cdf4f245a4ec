"""Template refs (R7): the one parser of every form a template may be named by. Pure.

A ref is one of: a raw artifact id ``tmpl_…``; ``name``; ``name:tag``; ``name:tb_…`` (exact build);
``namespace/name[:qualifier]`` where namespace is a slug (``acme``, ``nullspace``) or a legacy owner UUID.
``parse_ref`` raises ``InvalidRef`` saying why a text is none of them; the catalog resolves a ``TemplateRef``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from amber.contract.errors import InvalidRef
from amber.contract.images import explicit_registry

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
ARTIFACT_PREFIX = "tmpl_"
BUILD_PREFIX = "tb_"
SYSTEM_NAMESPACE = "nullspace"


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


def try_parse_ref(text: str) -> TemplateRef | None:
    """``parse_ref``, or None when ``text`` is no template ref (a ``base_image`` may name an OCI image instead)."""
    try:
        return parse_ref(text)
    except InvalidRef:
        return None


def is_syntactic_ref(text: str) -> bool:
    return try_parse_ref(text) is not None


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
