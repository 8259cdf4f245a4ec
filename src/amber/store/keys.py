"""API keys (hashed at rest) and the namespaces they belong to; a key resolves to a ``Caller``.

A key is ``amber_`` + 256 random bits, shown once at creation; only its SHA-256 is stored, so the database cannot
give a key back. A namespace is created with its first key; the system namespace (``nullspace``) takes none.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber.store.errors import Invalid
from amber.store.models import ApiKey, Namespace

API_KEY_PREFIX = "amber_"


@dataclass(frozen=True)
class Caller:
    """The authenticated principal: an API key and its (default) namespace."""

    key_id: str
    namespace_id: str
    namespace_slug: str


def hash_key(key: str) -> str:
    """What is stored of a key (its SHA-256, hex); the key itself is never stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, namespace_slug: str) -> str:
    """Create a key in ``namespace_slug`` (created if new). Returns the key; only its hash is stored."""
    namespace = ensure_namespace(session, namespace_slug)
    if namespace.kind == "system":
        raise Invalid(f"namespace {namespace_slug!r} is reserved", field="namespace")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(id="key_" + secrets.token_hex(8), key_hash=hash_key(key), namespace_id=namespace.id))
    return key


def caller_for_key(session: Session, key: str) -> Caller | None:
    """The principal a presented key stands for, or None for an unknown key."""
    row = session.execute(
        select(ApiKey.id, Namespace.id, Namespace.slug)
        .join(Namespace, Namespace.id == ApiKey.namespace_id)
        .where(ApiKey.key_hash == hash_key(key))
    ).first()
    if row is None:
        return None
    return Caller(key_id=row[0], namespace_id=row[1], namespace_slug=row[2])


def ensure_namespace(session: Session, slug: str, kind: str = "user") -> Namespace:
    """The namespace ``slug``, created (of ``kind``) when it does not exist yet."""
    namespace = session.scalar(select(Namespace).where(Namespace.slug == slug))
    if namespace is None:
        namespace = Namespace(id=str(uuid.uuid4()), slug=slug, kind=kind)
        session.add(namespace)
        session.flush()
    return namespace
