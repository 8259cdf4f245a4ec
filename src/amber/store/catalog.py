"""The template catalog: namespaces, ref resolution, tags, aliases, visibility, renames, claims, deletion.

Every function takes an open ``Session`` (one transaction, committed by the caller) and a ``Caller``; refs are
``amber.contract.template_refs.TemplateRef`` (the one ref parser). API keys are ``store.keys``; the contract JSON
of what is resolved here (TemplateInfo) is rendered above the store, in ``builds.views``.
Visibility: a caller reads its own namespace's templates and every public one; it changes only its own.
Anything it may not read is reported exactly like something that does not exist (``NotFound``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, func, or_, select, text
from sqlalchemy.orm import Session

from amber.contract.template_refs import SYSTEM_NAMESPACE, TemplateRef
from amber.store import ids
from amber.store.errors import Conflict, Invalid, NotFound
from amber.store.keys import Caller, ensure_namespace
from amber.store.models import (
    Alias,
    Artifact,
    Build,
    NameClaim,
    Namespace,
    Tag,
    TagEvent,
    Template,
    utcnow,
)


@dataclass
class Resolved:
    template: Template
    namespace: Namespace
    artifact: Artifact | None
    via_tag: str | None = None


def not_found(ref: str) -> NotFound:
    return NotFound(f"template {ref!r} not found", code="template_not_found")


# -- namespaces -------------------------------------------------------------------------------------------------


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


def resolve(session: Session, caller: Caller, ref: TemplateRef, *, write: bool = False) -> Resolved:
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


def list_templates(session: Session, caller: Caller) -> list[Resolved]:
    """Every visible logical template that has an artifact (at its default), own namespace first."""
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
        out.append(Resolved(template=template, namespace=namespace, artifact=artifact))
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


def artifact_ids(session: Session, template_id: str) -> list[str]:
    """Ids of the template's artifacts that still exist."""
    return list(session.scalars(select(Artifact.id).where(Artifact.template_id == template_id)))


def artifact_dir(session: Session, artifact_id: str) -> str | None:
    """Where an artifact's files are, None when the artifact was deleted."""
    return session.scalar(select(Artifact.storage_dir).where(Artifact.id == artifact_id))


def readable_by_name(session: Session, namespace: str, name: str, caller: Caller | None) -> bool:
    """Does ``namespace/name`` (slug or owner UUID; a name or alias) name a template ``caller`` (None: anonymous)
    may read? Another namespace's private template reads exactly like no template."""
    ns = namespace_by_ref(session, namespace)
    template = find_template(session, ns.id, name) if ns is not None else None
    if template is None:
        return False
    return template.visibility == "public" or (caller is not None and caller.namespace_id == template.namespace_id)


def visible_namespace(session: Session, caller: Caller, slug: str) -> Namespace:
    """Namespace ``slug`` as ``caller`` may see it: its own, a system one, or one with a public template; anything
    else is ``NotFound``."""
    ns = session.scalar(select(Namespace).where(Namespace.slug == slug))
    if ns is None or (ns.kind == "user" and ns.id != caller.namespace_id and not has_public_template(session, ns.id)):
        raise NotFound(f"namespace {slug!r} not found", code="not_found")
    return ns


def artifact_count(session: Session, template_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Artifact).where(Artifact.template_id == template_id))
               or 0)


def resolve_base_template(session: Session, caller: Caller, ref: TemplateRef) -> Resolved:
    """Resolve a template ``base_image``. The SDK's ``from_template("name[:tag]")`` always sends
    ``nullspace/name:tag`` (``nullspace/name:latest`` for a bare name); when no builtin template answers to it,
    the caller's own ``name:tag`` does (and for the SDK-invented ``latest``, the template's default tag)."""
    try:
        return resolve(session, caller, ref)
    except NotFound:
        if ref.namespace != SYSTEM_NAMESPACE or ref.name is None or ref.artifact_id is not None:
            raise
    own = TemplateRef(text=ref.text, name=ref.name, qualifier=ref.qualifier)
    try:
        return resolve(session, caller, own)
    except NotFound:
        if ref.tag != "latest":
            raise not_found(ref.text) from None
    try:
        return resolve(session, caller, TemplateRef(text=ref.text, name=ref.name))
    except NotFound:
        raise not_found(ref.text) from None


def resolve_launch(session: Session, caller: Caller, ref: TemplateRef) -> Resolved:
    """Resolve the template a machine launches from. A ref without a namespace (``base``, ``base:latest``) names
    the caller's own template when it has one with an artifact, else the builtin of that name
    (``nullspace/base``); every other form resolves as ``resolve`` does. ``NotFound`` names ``ref`` as given."""
    try:
        resolved = resolve(session, caller, ref)
    except NotFound:
        resolved = None
    if resolved is not None and resolved.artifact is not None:
        return resolved
    if ref.namespace is not None or ref.artifact_id is not None or ref.name is None:
        if resolved is not None:
            return resolved
        raise not_found(ref.text)
    builtin = TemplateRef(text=ref.text, namespace=SYSTEM_NAMESPACE, name=ref.name, qualifier=ref.qualifier)
    try:
        return resolve(session, caller, builtin)
    except NotFound:
        if resolved is not None:
            return resolved  # the caller's own template, still without an artifact
        raise not_found(ref.text) from None


# -- builtin templates ------------------------------------------------------------------------------------------

_BUILTIN_LOCK = 0x616D6265725F6274  # pg_advisory_xact_lock key ("amber_bt"): hosts register builtins in turn


@dataclass(frozen=True)
class BuiltinTemplate:
    """A builtin template's current artifact on the registering host (``amber.builds.builtin``)."""

    name: str
    description: str
    artifact_id: str
    build_id: str
    storage_dir: str
    runtime_defaults: dict[str, Any]
    size_bytes: int
    built_at: datetime
    default_tag: str
    tags: tuple[str, ...]


class Registration(StrEnum):
    CREATED = "created"  # the template did not exist
    UPDATED = "updated"  # a new artifact, or changed rows
    UNCHANGED = "unchanged"  # nothing was written
    KEPT_NEWER = "kept_newer"  # another host registered a more recently built artifact: left as it is


def register_builtin(session: Session, builtin: BuiltinTemplate) -> Registration:
    """Make ``nullspace/<name>`` (namespace kind ``system``, public) answer with ``builtin``'s artifact under each of
    its tags; superseded artifacts of the builtin are deleted (their files are the builder's). Idempotent: nothing
    is written when the rows already say so. Hosts sharing a database register in turn (an advisory lock on
    PostgreSQL, SQLite's write lock), and a more recently built artifact is never replaced by an older one."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _BUILTIN_LOCK})
    namespace = ensure_namespace(session, SYSTEM_NAMESPACE, kind="system")  # made by the first migration
    outcome = Registration.UNCHANGED
    template = session.scalar(select(Template).where(Template.namespace_id == namespace.id,
                                                     Template.name == builtin.name))
    if template is None:
        template = Template(id=ids.template_id(), namespace_id=namespace.id, name=builtin.name, visibility="public",
                            description=builtin.description, default_tag=builtin.default_tag)
        session.add(template)
        session.flush()
        outcome = Registration.CREATED
    artifact = session.get(Artifact, builtin.artifact_id)
    if artifact is None:
        current = _default_artifact(session, template)
        if current is not None and current.created_at > builtin.built_at:
            return Registration.KEPT_NEWER
    wanted_template = {"visibility": "public", "description": builtin.description, "default_tag": builtin.default_tag}
    if _update(template, wanted_template):
        outcome = outcome if outcome == Registration.CREATED else Registration.UPDATED
    wanted_artifact: dict[str, Any] = {"template_id": template.id, "build_id": builtin.build_id,
                                       "storage_dir": builtin.storage_dir,
                                       "runtime_defaults": builtin.runtime_defaults, "oci_metadata": None,
                                       "size_bytes": builtin.size_bytes, "created_at": builtin.built_at}
    if artifact is None:
        artifact = Artifact(id=builtin.artifact_id, **wanted_artifact)
        session.add(artifact)
        session.flush()
        outcome = outcome if outcome == Registration.CREATED else Registration.UPDATED
    elif _update(artifact, wanted_artifact):
        outcome = Registration.UPDATED
    for tag in builtin.tags:
        row = session.get(Tag, (template.id, tag))
        if row is None or row.artifact_id != artifact.id:
            move_tag(session, template, tag, artifact)
            outcome = outcome if outcome == Registration.CREATED else Registration.UPDATED
    for stale in session.scalars(select(Tag).where(Tag.template_id == template.id,
                                                   Tag.tag.not_in(builtin.tags))).all():
        session.delete(stale)
        outcome = Registration.UPDATED
    for old in session.scalars(select(Artifact).where(Artifact.template_id == template.id,
                                                      Artifact.id != artifact.id)).all():
        delete_artifact(session, old)
        outcome = Registration.UPDATED
    return outcome


def _update(row: Any, wanted: dict[str, Any]) -> bool:
    """Set the attributes of ``row`` that differ from ``wanted``; whether any did."""
    changed = False
    for key, value in wanted.items():
        if getattr(row, key) != value:
            setattr(row, key, value)
            changed = True
    return changed
