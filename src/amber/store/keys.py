"""API keys (hashed at rest) and the namespaces they belong to; a key resolves to a ``Caller``.

A key is ``amber_`` + 256 random bits, shown once at creation; only its SHA-256 and its first 12 characters
(``amber_`` + 36 bits, to recognise it in ``amber keys list``) are stored, so the database cannot give a key
back. A namespace is created with its first key; the system namespace (``nullspace``) takes none. A revoked key
never authenticates again (its row stays, for the listing); ``last_used_at`` is refreshed at most once a minute.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from amber.store.errors import Invalid
from amber.store.models import ApiKey, Namespace

API_KEY_PREFIX = "amber_"
SHOWN_PREFIX_CHARS = 12  # "amber_" + 6 characters: 36 of the key's 256 bits
MIN_REVOKE_PREFIX_CHARS = 8  # a prefix given to ``revoke`` must say more than "amber_"
LAST_USED_GRANULARITY = timedelta(minutes=1)


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
    session.add(ApiKey(id="key_" + secrets.token_hex(8), key_hash=hash_key(key), namespace_id=namespace.id,
                       prefix=key[:SHOWN_PREFIX_CHARS]))  # fmt: skip
    return key


def caller_for_key(session: Session, key: str) -> Caller | None:
    """The principal a presented key stands for, or None for an unknown or revoked key."""
    found = lookup_key(session, key)
    return found[0] if found is not None else None


def lookup_key(session: Session, key: str) -> tuple[Caller, bool] | None:
    """``(caller, stale)`` for a valid key, ``stale`` when its ``last_used_at`` should be refreshed
    (``touch_key``: a minute old or never set); None for an unknown or revoked key."""
    row = session.execute(
        select(ApiKey.id, Namespace.id, Namespace.slug, ApiKey.last_used_at)
        .join(Namespace, Namespace.id == ApiKey.namespace_id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    last_used: datetime | None = row[3]
    stale = last_used is None or datetime.now(UTC) - last_used >= LAST_USED_GRANULARITY
    return Caller(key_id=row[0], namespace_id=row[1], namespace_slug=row[2]), stale


def touch_key(session: Session, key_id: str) -> None:
    """Record that the key was used now."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=datetime.now(UTC)))


@dataclass(frozen=True)
class KeyInfo:
    """What ``amber keys list`` shows of a key (never the key: only its first characters, when known)."""

    key_id: str
    namespace: str
    prefix: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def list_keys(session: Session, namespace: str | None = None) -> list[KeyInfo]:
    """Every key (of ``namespace`` when given), oldest first, revoked ones included."""
    query = (select(ApiKey, Namespace.slug).join(Namespace, Namespace.id == ApiKey.namespace_id)
             .order_by(ApiKey.created_at, ApiKey.id))  # fmt: skip
    if namespace is not None:
        query = query.where(Namespace.slug == namespace)
    return [KeyInfo(k.id, slug, k.prefix, k.created_at, k.last_used_at, k.revoked_at)
            for k, slug in session.execute(query).all()]  # fmt: skip


def revoke_key(session: Session, what: str) -> KeyInfo:
    """Revoke the key named by its id (``key_…``), by the key itself, or by a prefix of the key of at least
    ``MIN_REVOKE_PREFIX_CHARS`` characters that matches exactly one key. Revoking a revoked key is a no-op.
    Raises ``Invalid`` (field ``key``) naming why nothing was revoked."""
    what = what.strip()
    matches: list[ApiKey]
    if what.startswith(API_KEY_PREFIX) and len(what) > SHOWN_PREFIX_CHARS:
        # The whole key, or a prefix longer than what is stored of it (compared as far as it is stored).
        matches = list(session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(what))).all())
        if not matches:
            matches = list(session.scalars(select(ApiKey).where(ApiKey.prefix == what[:SHOWN_PREFIX_CHARS])).all())
    elif what.startswith(API_KEY_PREFIX):
        if len(what) < MIN_REVOKE_PREFIX_CHARS:
            raise Invalid(f"a key prefix needs at least {MIN_REVOKE_PREFIX_CHARS} characters", field="key")
        matches = list(session.scalars(select(ApiKey).where(ApiKey.prefix.startswith(what, autoescape=True))).all())
    else:
        matches = list(session.scalars(select(ApiKey).where(ApiKey.id == what)).all())
    if not matches:
        raise Invalid(f"no API key matches {what[:SHOWN_PREFIX_CHARS]!r}", field="key")
    if len(matches) > 1:
        raise Invalid(f"{len(matches)} API keys match {what!r}: give the key id (amber keys list)", field="key")
    key = matches[0]
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        session.flush()
    slug = session.scalar(select(Namespace.slug).where(Namespace.id == key.namespace_id)) or ""
    return KeyInfo(key.id, slug, key.prefix, key.created_at, key.last_used_at, key.revoked_at)


def ensure_namespace(session: Session, slug: str, kind: str = "user") -> Namespace:
    """The namespace ``slug``, created (of ``kind``) when it does not exist yet."""
    namespace = session.scalar(select(Namespace).where(Namespace.slug == slug))
    if namespace is None:
        namespace = Namespace(id=str(uuid.uuid4()), slug=slug, kind=kind)
        session.add(namespace)
        session.flush()
    return namespace
