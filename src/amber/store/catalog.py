"""The template catalog: namespaces, API keys, ref resolution, tags, aliases, visibility, renames, claims.

Every function takes an open ``Session`` (one transaction, committed by the caller) and a ``Caller``.
Visibility: a caller reads its own namespace's templates and every public one; it changes only its own.
Anything it may not read is reported exactly like something that does not exist (``NotFound``).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from amber.store import ids
from amber.store.errors import Conflict, Invalid, NotFound
from amber.store.models import (
    Alias,
    ApiKey,
    Artifact,
    Build,
    NameClaim,
    Namespace,
    Tag,
    TagEvent,
    Template,
    utcnow,
)

API_KEY_PREFIX = "amber_"
SYSTEM_NAMESPACE = "nullspace"
RUNTIME_DEFAULT_KEYS = ("default_env_keys", "start_cmd", "default_user", "default_workdir", "readiness")
INFO_FIELDS = (
    "id",
    "name",
    "description",
    "tags",
    "default_tag",
    "builtin",
    "canonical_ref",
    "namespace_slug",
    "visibility",
)


@dataclass(frozen=True)
class Caller:
    """The authenticated principal: an API key and its (default) namespace."""

    key_id: str
    namespace_id: str
    namespace_slug: str


@dataclass(frozen=True)
class RefQuery:
    """A parsed ref as the catalog needs it (see ``amber.api.refs.parse_ref``)."""

    text: str
    artifact_id: str | None = None
    namespace: str | None = None
    name: str | None = None
    tag: str | None = None
    build_id: str | None = None


@dataclass
class Resolved:
    template: Template
    namespace: Namespace
    artifact: Artifact | None
    via_tag: str | None = None


def not_found(ref: str) -> NotFound:
    return NotFound(f"template {ref!r} not found", code="template_not_found")


# -- namespaces and keys -----------------------------------------------------------------------------------------


def ensure_namespace(session: Session, slug: str, kind: str = "user") -> Namespace:
    namespace = session.scalar(select(Namespace).where(Namespace.slug == slug))
    if namespace is None:
        namespace = Namespace(id=str(uuid.uuid4()), slug=slug, kind=kind)
        session.add(namespace)
        session.flush()
    return namespace


def hash_key(key: str) -> str:
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
    row = session.execute(
        select(ApiKey.id, Namespace.id, Namespace.slug)
        .join(Namespace, Namespace.id == ApiKey.namespace_id)
        .where(ApiKey.key_hash == hash_key(key))
    ).first()
    if row is None:
        return None
    return Caller(key_id=row[0], namespace_id=row[1], namespace_slug=row[2])


def has_public_template(session: Session, namespace_id: str) -> bool:
    """Another caller may see this namespace's metadata: a public template already shows its slug."""
    return session.scalar(select(Template.id).where(Template.namespace_id == namespace_id,
                                                    Template.visibility == "public").limit(1)) is not None


def namespace_by_ref(session: Session, text: str) -> Namespace | None:
    """A namespace by slug or (legacy) owner UUID, the UUID in either case (ids are stored lower-case)."""
    return session.scalar(select(Namespace).where(or_(Namespace.slug == text, Namespace.id == text.lower())))


# -- resolution -------------------------------------------------------------------------------------------------


def _visible(caller: Caller, template: Template) -> bool:
    return template.namespace_id == caller.namespace_id or template.visibility == "public"


def _default_artifact(session: Session, template: Template) -> Artifact | None:
    tag = session.get(Tag, (template.id, template.default_tag))
    if tag is not None:
        return session.get(Artifact, tag.artifact_id)
    return session.scalar(
        select(Artifact).where(Artifact.template_id == template.id).order_by(Artifact.created_at.desc()).limit(1)
    )


def find_template(session: Session, namespace_id: str, name: str) -> Template | None:
    """A template by name or by one of its aliases."""
    template = session.scalar(select(Template).where(Template.namespace_id == namespace_id, Template.name == name))
    if template is not None:
        return template
    alias = session.get(Alias, (namespace_id, name))
    return session.get(Template, alias.template_id) if alias is not None else None


def resolve(session: Session, caller: Caller, ref: RefQuery, *, write: bool = False) -> Resolved:
    """Resolve ``ref`` for ``caller``. ``write`` limits it to the caller's own namespace.
    The artifact is None for a bare name whose template has no artifact yet."""
    if ref.artifact_id is not None:
        artifact = session.get(Artifact, ref.artifact_id)
        if artifact is None:
            raise not_found(ref.text)
        template = session.get(Template, artifact.template_id)
        assert template is not None
        via_tag = None
    else:
        if ref.namespace is None:
            namespace_id = caller.namespace_id
        else:
            ns = namespace_by_ref(session, ref.namespace)
            if ns is None:
                raise not_found(ref.text)
            namespace_id = ns.id
        assert ref.name is not None
        found = find_template(session, namespace_id, ref.name)
        if found is None:
            raise not_found(ref.text)
        template = found
        via_tag = ref.tag
        if ref.build_id is not None:
            artifact = session.scalar(
                select(Artifact).where(Artifact.build_id == ref.build_id, Artifact.template_id == template.id)
            )
            if artifact is None:
                raise not_found(ref.text)
        elif ref.tag is not None:
            tag = session.get(Tag, (template.id, ref.tag))
            if tag is None:
                raise not_found(ref.text)
            artifact = session.get(Artifact, tag.artifact_id)
        else:
            artifact = _default_artifact(session, template)
    if not _visible(caller, template) or (write and template.namespace_id != caller.namespace_id):
        raise not_found(ref.text)
    namespace = session.get(Namespace, template.namespace_id)
    assert namespace is not None
    return Resolved(template=template, namespace=namespace, artifact=artifact, via_tag=via_tag)


def require_artifact(resolved: Resolved, ref: str) -> Artifact:
    if resolved.artifact is None:
        raise NotFound(f"template {ref!r} has no built artifact yet", code="template_not_found")
    return resolved.artifact


# -- views ------------------------------------------------------------------------------------------------------


def artifact_tags(session: Session, artifact_id: str) -> list[str]:
    return list(
        session.scalars(select(Tag.tag).where(Tag.artifact_id == artifact_id).order_by(Tag.assigned_at, Tag.tag))
    )


def safe_runtime_defaults(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Only the documented keys (R55: env *keys*, never values)."""
    if not value:
        return None
    return {k: value[k] for k in RUNTIME_DEFAULT_KEYS if value.get(k) is not None}


def canonical_ref(namespace: Namespace, template: Template, tag: str | None) -> str:
    return f"{namespace.slug}/{template.name}:{tag}" if tag else f"{namespace.slug}/{template.name}"


def template_info(session: Session, resolved: Resolved) -> dict[str, Any]:
    """TemplateInfo JSON for a resolved artifact (``templates-models.md`` §5.1)."""
    template, namespace = resolved.template, resolved.namespace
    artifact = require_artifact(resolved, template.name)
    tags = artifact_tags(session, artifact.id)
    if resolved.via_tag is not None:
        qualifier: str | None = resolved.via_tag
    elif template.default_tag in tags:
        qualifier = template.default_tag
    elif tags:
        qualifier = tags[0]
    else:
        qualifier = artifact.build_id
    info: dict[str, Any] = {
        "id": artifact.id,
        "name": template.name,
        "description": template.description,
        "builtin": namespace.kind == "system",
        "canonical_ref": canonical_ref(namespace, template, qualifier),
        "namespace_slug": namespace.slug,
        "visibility": template.visibility,
        "tags": tags,
        "default_tag": template.default_tag,
    }
    runtime = safe_runtime_defaults(artifact.runtime_defaults)
    if runtime:
        info["runtime_defaults"] = runtime
    return info


def apply_fields(info: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    if fields is None:
        return info
    return {k: info[k] for k in fields if k in info}


def parse_fields(raw: str | None) -> list[str] | None:
    """The ``fields`` mask (R11). Unknown names → ``Invalid`` with code ``invalid_fields``."""
    if raw is None:
        return None
    names = [f.strip() for f in raw.split(",") if f.strip()]
    unknown = [f for f in names if f not in INFO_FIELDS]
    if unknown or not names:
        raise Invalid(
            f"fields: unsupported field(s) {', '.join(unknown) or '(empty)'}; supported: {', '.join(INFO_FIELDS)}",
            code="invalid_fields",
            field="fields",
        )
    return list(dict.fromkeys(names))


def list_templates(session: Session, caller: Caller) -> list[dict[str, Any]]:
    """One TemplateInfo per visible logical template that has an artifact, own namespace first."""
    rows = session.scalars(
        select(Template)
        .where(or_(Template.namespace_id == caller.namespace_id, Template.visibility == "public"))
        .order_by(Template.namespace_id != caller.namespace_id, Template.name)
    ).all()
    out = []
    for template in rows:
        artifact = _default_artifact(session, template)
        if artifact is None:
            continue
        namespace = session.get(Namespace, template.namespace_id)
        assert namespace is not None
        out.append(template_info(session, Resolved(template=template, namespace=namespace, artifact=artifact)))
    return out


# -- tags -------------------------------------------------------------------------------------------------------


def move_tag(session: Session, template: Template, tag: str, artifact: Artifact, action: str = "assign") -> None:
    """Point ``template:tag`` at ``artifact`` (creating or moving it) and record the move."""
    now = utcnow()
    row = session.get(Tag, (template.id, tag))
    if row is None:
        session.add(Tag(template_id=template.id, tag=tag, artifact_id=artifact.id, build_id=artifact.build_id,
                        assigned_at=now))
    else:
        row.artifact_id, row.build_id, row.assigned_at = artifact.id, artifact.build_id, now
    session.add(TagEvent(template_id=template.id, tag=tag, action=action, artifact_id=artifact.id,
                         build_id=artifact.build_id, at=now))
    template.updated_at = now


def list_tags(session: Session, template: Template) -> list[dict[str, Any]]:
    rows = session.scalars(select(Tag).where(Tag.template_id == template.id).order_by(Tag.tag)).all()
    return [{"tag": t.tag, "build_id": t.build_id, "created_at": t.assigned_at} for t in rows]


def remove_tag(session: Session, template: Template, tag: str) -> None:
    row = session.get(Tag, (template.id, tag))
    if row is None:
        raise NotFound(f"tag {tag!r} not found on template {template.name!r}")
    session.delete(row)
    session.add(TagEvent(template_id=template.id, tag=tag, action="remove", artifact_id=row.artifact_id,
                         build_id=row.build_id))


# -- aliases, rename, visibility --------------------------------------------------------------------------------


def list_aliases(session: Session, namespace: Namespace, template: Template) -> list[dict[str, Any]]:
    rows = session.scalars(select(Alias).where(Alias.template_id == template.id).order_by(Alias.created_at)).all()
    return [{"alias_ref": f"{namespace.slug}/{a.name}", "created_at": a.created_at} for a in rows]


def remove_alias(session: Session, namespace: Namespace, template: Template, alias: str) -> None:
    """``alias`` as listed (``ns/name``) or bare; a namespace other than the template's names no alias of it."""
    prefix, slash, name = alias.rpartition("/")
    name = name.split(":", 1)[0]
    row = session.get(Alias, (namespace.id, name))
    if row is None or row.template_id != template.id or (slash and prefix not in (namespace.slug, namespace.id)):
        raise NotFound(f"alias {alias!r} not found on template {template.name!r}")
    session.delete(row)


def _active_claim(session: Session, namespace_id: str, name: str) -> NameClaim | None:
    return session.scalar(
        select(NameClaim).where(
            NameClaim.namespace_id == namespace_id,
            NameClaim.name == name,
            NameClaim.consumed_at.is_(None),
            NameClaim.released_at.is_(None),
            NameClaim.expires_at > utcnow(),
        )
    )


def _name_taken(session: Session, namespace_id: str, name: str, *, except_template: str | None = None) -> str | None:
    """Why ``name`` is not free in the namespace, or None."""
    template = session.scalar(select(Template).where(Template.namespace_id == namespace_id, Template.name == name))
    if template is not None and template.id != except_template:
        return f"name {name!r} is already used by another template"
    alias = session.get(Alias, (namespace_id, name))
    if alias is not None and alias.template_id != except_template:
        return f"name {name!r} is already an alias of another template"
    if _active_claim(session, namespace_id, name) is not None:
        return f"name {name!r} is reserved by an active name claim"
    return None


def rename(session: Session, namespace: Namespace, template: Template, new_name: str) -> None:
    """R5: the old name survives as a read-only alias; existing aliases are kept."""
    if new_name == template.name:
        return
    reason = _name_taken(session, namespace.id, new_name, except_template=template.id)
    if reason:
        raise Conflict(reason)
    own_alias = session.get(Alias, (namespace.id, new_name))
    if own_alias is not None:
        session.delete(own_alias)
    session.add(Alias(namespace_id=namespace.id, name=template.name, template_id=template.id))
    template.name = new_name
    template.updated_at = utcnow()
    session.flush()


# -- claims -----------------------------------------------------------------------------------------------------


def reserve_name(session: Session, caller: Caller, name: str, ttl_secs: int) -> dict[str, Any]:
    reason = _name_taken(session, caller.namespace_id, name)
    if reason:
        raise Conflict(reason)
    claim = NameClaim(
        token=ids.claim_token(),
        namespace_id=caller.namespace_id,
        name=name,
        expires_at=utcnow() + timedelta(seconds=ttl_secs),
    )
    session.add(claim)
    return {
        "claim_token": claim.token,
        "canonical_ref": f"{caller.namespace_slug}/{name}",
        "expires_at": claim.expires_at,
    }


def release_claim(session: Session, caller: Caller, token: str) -> None:
    claim = session.get(NameClaim, token)
    if claim is None or claim.namespace_id != caller.namespace_id or claim.released_at is not None:
        raise NotFound(f"name claim {token!r} not found", code="template_name_claim_not_found")
    if claim.consumed_at is not None:
        raise Conflict(f"name claim {token!r} was already used by a build")
    claim.released_at = utcnow()


def build_target(session: Session, caller: Caller, name: str | None, claim_token: str | None) -> Template:
    """The logical template a new build belongs to (R1, R13), created if new. Consumes ``claim_token``."""
    if claim_token is not None:
        claim = session.get(NameClaim, claim_token)
        if (
            claim is None
            or claim.namespace_id != caller.namespace_id
            or claim.released_at is not None
            or claim.consumed_at is not None
            or claim.expires_at <= utcnow()
        ):
            raise Invalid("claim_token: unknown, expired, released or already used name claim", field="claim_token")
        if name is not None and name != claim.name:
            raise Invalid(f"claim_token: the claim reserves {claim.name!r}, not {name!r}", field="claim_token")
        name = claim.name
        claim.consumed_at = utcnow()
    elif name is None:
        name = "template-" + secrets.token_hex(4)
    template = session.scalar(
        select(Template).where(Template.namespace_id == caller.namespace_id, Template.name == name)
    )
    if template is not None:
        return template
    alias = session.get(Alias, (caller.namespace_id, name))
    if alias is not None:
        raise Conflict(f"name {name!r} is a read-only alias of another template; build under its current name")
    if claim_token is None and _active_claim(session, caller.namespace_id, name) is not None:
        raise Conflict(f"name {name!r} is reserved by a name claim; pass its claim_token")
    template = Template(id=ids.template_id(), namespace_id=caller.namespace_id, name=name)
    session.add(template)
    session.flush()
    return template


# -- deletion ---------------------------------------------------------------------------------------------------


def delete_artifact(session: Session, artifact: Artifact) -> str:
    """Delete one artifact and the tags on it; returns its storage dir for the caller to remove."""
    session.execute(delete(Tag).where(Tag.artifact_id == artifact.id))
    session.delete(artifact)
    return artifact.storage_dir


def delete_template(session: Session, template: Template) -> list[str]:
    """Delete a logical template with its artifacts, tags, aliases and builds; returns storage dirs."""
    dirs = [a.storage_dir for a in session.scalars(select(Artifact).where(Artifact.template_id == template.id))]
    session.execute(delete(Tag).where(Tag.template_id == template.id))
    session.execute(delete(Artifact).where(Artifact.template_id == template.id))
    session.execute(delete(Alias).where(Alias.template_id == template.id))
    session.execute(delete(TagEvent).where(TagEvent.template_id == template.id))
    session.execute(delete(Build).where(Build.template_id == template.id))
    session.delete(template)
    return dirs


def artifact_count(session: Session, template_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Artifact).where(Artifact.template_id == template_id))
               or 0)


def base_template_query(text: str) -> RefQuery | None:
    """A template ``base_image`` as a ref query: ``tmpl_…``, ``ns/name[:tag|:tb_…]``, ``name:tb_…``.
    None when it cannot be a template ref."""
    if text.startswith("tmpl_") and "/" not in text and ":" not in text:
        return RefQuery(text=text, artifact_id=text)
    namespace: str | None = None
    rest = text
    if "/" in text:
        namespace, _, rest = text.partition("/")
        if "/" in rest:
            return None
    name, sep, qualifier = rest.partition(":")
    if not name or (sep and not qualifier):
        return None
    build_id = qualifier if qualifier.startswith("tb_") else None
    tag = qualifier if sep and build_id is None else None
    return RefQuery(text=text, namespace=namespace, name=name, tag=tag, build_id=build_id)


BUILTIN_NAMESPACE = "nullspace"


def resolve_base_template(session: Session, caller: Caller, ref: RefQuery) -> Resolved:
    """Resolve a template ``base_image``. The SDK's ``from_template("name[:tag]")`` always sends
    ``nullspace/name:tag`` (``nullspace/name:latest`` for a bare name); when no builtin template answers to it,
    the caller's own ``name:tag`` does (and for the SDK-invented ``latest``, the template's default tag)."""
    try:
        return resolve(session, caller, ref)
    except NotFound:
        if ref.namespace != BUILTIN_NAMESPACE or ref.name is None or ref.artifact_id is not None:
            raise
    own = RefQuery(text=ref.text, name=ref.name, tag=ref.tag, build_id=ref.build_id)
    try:
        return resolve(session, caller, own)
    except NotFound:
        if ref.tag != "latest":
            raise not_found(ref.text) from None
    try:
        return resolve(session, caller, RefQuery(text=ref.text, name=ref.name))
    except NotFound:
        raise not_found(ref.text) from None
