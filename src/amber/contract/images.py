"""Image references: ``[registry[:port]/]repository[:tag][@digest]`` with Docker Hub normalisation. Pure.

The grammar is distribution's ``reference`` package (what Docker and BuildKit parse): the first path component
is a registry when it contains ``.`` or ``:``, is ``localhost``, or has upper-case letters; otherwise the image is
on Docker Hub (``docker.io``), where single-component names live under ``library/``. ``index.docker.io``,
``registry-1.docker.io`` and ``registry.hub.docker.com`` are aliases of ``docker.io``. A reference without tag or
digest means tag ``latest``. ``registry_host`` is the one function that answers "which registry does this
reference pull from" (request rules, Dockerfile analysis, credentials, BuildKit sessions all use it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from amber.contract.errors import InvalidReferenceError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_MAX_NAME_LENGTH = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageReference:
    """A parsed, normalised image reference. ``tag`` and ``digest`` may both be set; the digest wins."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """The host that serves the registry API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def manifest_reference(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag (``latest`` by default)."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> ImageReference:
        return ImageReference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def explicit_registry(reference: str) -> str | None:
    """The registry host a reference names, as written, or None when it names none (Docker Hub).

    The grammar's rule (distribution ``splitDockerDomain``): the first ``/``-separated component is a host when it
    contains ``.`` or ``:``, is ``localhost``, or has an upper-case letter (repository components are lower-case
    only, so ``Foo/bar`` can only mean host ``Foo``). A reference without ``/`` names no host.
    """
    first, sep, _rest = reference.partition("@")[0].partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        return first
    return None


def _split_domain(name: str) -> tuple[str, str]:
    host = explicit_registry(name)
    return (host, name[len(host) + 1 :]) if host is not None else (DOCKER_HUB, name)


def canonical_host(host: str) -> str:
    """A registry host as credentials and rules compare it: lower case (DNS names are case-insensitive), no
    scheme, path or trailing ``/``, and Docker Hub's several names (``index.docker.io``, ``registry-1.docker.io``
    — what BuildKit asks for — ``registry.hub.docker.com``) as ``docker.io``."""
    host = host.strip().lower().rstrip("/")
    for prefix in ("https://", "http://"):
        host = host.removeprefix(prefix)
    host = host.split("/", 1)[0]
    return DOCKER_HUB if host in _HUB_ALIASES else host


def registry_host(reference: str) -> str:
    """The registry host an image reference pulls from, as ``canonical_host`` spells it (``explicit_registry``'s
    rule, else Docker Hub); never raises. For every reference ``parse_reference`` accepts,
    ``registry_host(text) == canonical_host(parse_reference(text).registry)`` (a property test holds it to that).
    """
    return canonical_host(explicit_registry(reference) or DOCKER_HUB)


def parse_reference(text: str) -> ImageReference:
    """Parse and normalise ``text``; raise :class:`InvalidReferenceError` saying what is wrong.

    Examples: ``ubuntu`` → ``docker.io/library/ubuntu:latest``; ``registry:5000/team/app:tag`` keeps its
    registry; ``app@sha256:<64 hex>`` pins a digest. Only ``sha256`` digests are accepted for pulling.
    """
    if not isinstance(text, str) or not text:
        raise InvalidReferenceError("image reference is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReferenceError(f"image reference {text!r} contains whitespace")
    remainder, at, digest = text.partition("@")
    if at:
        if not _DIGEST.fullmatch(digest):
            raise InvalidReferenceError(f"image reference {text!r} has a malformed digest {digest!r}")
        algorithm, _, hex_part = digest.partition(":")
        if algorithm != "sha256" or not _SHA256_HEX.fullmatch(hex_part):
            raise InvalidReferenceError(
                f"image reference {text!r}: digest must be sha256 with 64 lower-case hex digits, got {digest!r}"
            )
    tag: str | None = None
    # A tag is the text after the last ':' that comes after the last '/' (a ':' before it is a port).
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReferenceError(f"image reference {text!r} has an invalid tag {tag!r}")
    if not remainder:
        raise InvalidReferenceError(f"image reference {text!r} has no repository name")
    registry, path = _split_domain(remainder)
    if not _DOMAIN.fullmatch(registry):
        raise InvalidReferenceError(f"image reference {text!r} has an invalid registry host {registry!r}")
    if not path:
        raise InvalidReferenceError(f"image reference {text!r} has no repository name")
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            if component.lower() != component and _COMPONENT.fullmatch(component.lower()):
                raise InvalidReferenceError(f"image reference {text!r}: repository name must be lower-case")
            raise InvalidReferenceError(
                f"image reference {text!r} has an invalid repository path component {component!r}"
            )
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if len(f"{registry}/{path}") > _MAX_NAME_LENGTH:
        raise InvalidReferenceError(f"image reference {text!r} is longer than {_MAX_NAME_LENGTH} characters")
    if tag is None and not at:
        tag = DEFAULT_TAG
    return ImageReference(registry, path, tag, digest if at else None)
