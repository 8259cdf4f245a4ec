"""SQLAlchemy 2 models: the durable records of the template service.

One schema for SQLite and PostgreSQL (Alembic migrations in ``store/migrations``). Secrets, registry
credentials and inline build-context bytes never reach these tables: builds keep only a sanitised
definition plus the *ids/kinds* needed to decide whether a retry must bring fresh values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite drops the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[str]: JSON, datetime: UTCDateTime}


class Namespace(Base):
    """An owner of templates. Every API key belongs to exactly one namespace (its default)."""

    __tablename__ = "namespaces"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # UUID: legacy owner-UUID refs use it
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # TemplateNamespaceKind
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A bearer key, stored only as the SHA-256 of the key (keys are 256-bit random, so no slow hash needed)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    namespace_id: Mapped[str] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    prefix: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the key's first characters (display)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)  # refreshed at most once a minute
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)  # a revoked key never authenticates


class Template(Base):
    """A logical template: a name in a namespace with a visibility; its artifacts carry the tags."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("namespace_id", "name", name="uq_templates_namespace_name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    namespace_id: Mapped[str] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    description: Mapped[str] = mapped_column(Text, default="")
    default_tag: Mapped[str] = mapped_column(String(128), default="default")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """A template artifact (``tmpl_…``): root disk + snapshot directory produced by one successful build."""

    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), index=True)
    build_id: Mapped[str] = mapped_column(String(40), unique=True)
    storage_dir: Mapped[str] = mapped_column(Text)
    runtime_defaults: Mapped[dict[str, Any]] = mapped_column(default=dict)
    oci_metadata: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Build(Base):
    """One build attempt (retries are new rows chained by ``retry_of_build_id`` / ``original_build_id``)."""

    __tablename__ = "builds"
    __table_args__ = (
        Index("ix_builds_status_created", "status", "created_at"),
        Index("ix_builds_template_created", "template_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    namespace_id: Mapped[str] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"))
    artifact_id: Mapped[str] = mapped_column(String(40))  # reserved at acceptance; the artifact row comes later
    status: Mapped[str] = mapped_column(String(16))  # TemplateBuildStatus
    build_backend: Mapped[str] = mapped_column(String(16))
    source_type: Mapped[str] = mapped_column(String(16))
    tags: Mapped[list[str]] = mapped_column(default=list)
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)  # sanitised CreateTemplateRequest JSON
    plan: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)  # the BuildPlan it executes (JSON)
    base_image_auth_kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    registry_auth_hosts: Mapped[list[str]] = mapped_column(default=list)
    secret_ids: Mapped[list[str]] = mapped_column(default=list)
    inline_context: Mapped[bool] = mapped_column(Boolean, default=False)
    # The template artifact ``base_image`` resolved to at acceptance (template bases; tags may move later).
    base_artifact_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Set while the build needs memory-only inputs (secrets, credentials, inline bytes) held by one process.
    pinned_worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    build_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    triggered_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    retry_of_build_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    original_build_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    source_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    context_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    dockerfile_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    cache_summary: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    runtime_defaults: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    oci_metadata: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    failure_phase: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_detail: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cancel_requested_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancellation_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    log_next_offset: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)


class BuildLogEntry(Base):
    """One durable log entry; ``(build_id, offset)`` is the one cursor shared by polling, SSE and replay."""

    __tablename__ = "build_log_entries"

    build_id: Mapped[str] = mapped_column(ForeignKey("builds.id", ondelete="CASCADE"), primary_key=True)
    offset: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    entry_json: Mapped[str] = mapped_column(Text)  # the TemplateBuildLogEntry exactly as served


class Tag(Base):
    """A moving pointer ``template:tag`` → artifact; every move is also appended to ``tag_events``."""

    __tablename__ = "tags"

    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), index=True)
    build_id: Mapped[str] = mapped_column(String(40))
    assigned_at: Mapped[datetime] = mapped_column(default=utcnow)


class TagEvent(Base):
    """Tag history and build audit events (assign, promote, remove)."""

    __tablename__ = "tag_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), index=True)
    tag: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    artifact_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    build_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Alias(Base):
    """A read-only extra name of a logical template (left behind by a rename)."""

    __tablename__ = "aliases"

    namespace_id: Mapped[str] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NameClaim(Base):
    """A short-lived reservation of a logical name; consumed by the build that presents its token."""

    __tablename__ = "name_claims"
    __table_args__ = (Index("ix_name_claims_namespace_name", "namespace_id", "name"),)

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    namespace_id: Mapped[str] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    consumed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Blob(Base):
    """A build-context file handed out by preflight; bytes live content-addressed in the blob store."""

    __tablename__ = "blobs"
    __table_args__ = (Index("ix_blobs_namespace_sha", "namespace_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    namespace_id: Mapped[str] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)  # context path of the first descriptor (for error details)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)  # a force_upload generation
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class Machine(Base):
    """A sandbox restored from a template artifact (or a snapshot). The row outlives the VM as a tombstone.

    ``envs`` values are never stored (only ``env_keys``): they live in the guest agent's memory. ``owner`` is
    the serving process (``host:pid:start``) that holds the VM; another process answers for it only from here.
    """

    __tablename__ = "machines"
    __table_args__ = (
        Index("ix_machines_namespace_status", "namespace_id", "status"),
        Index("ix_machines_owner_status", "owner", "status"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    namespace_id: Mapped[str] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    template_ref: Mapped[str] = mapped_column(Text)  # as the caller gave it
    template_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    artifact_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    source_snapshot_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    parent_machine_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    status: Mapped[str] = mapped_column(String(16))  # MachineStatus
    end_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)  # EndReason
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int] = mapped_column(Integer)
    internet_access: Mapped[bool] = mapped_column(Boolean, default=True)
    user_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    env_keys: Mapped[list[str]] = mapped_column(default=list)
    cwd: Mapped[str | None] = mapped_column(Text, nullable=True)
    default_user: Mapped[str | None] = mapped_column(String(128), nullable=True)
    default_workdir: Mapped[str | None] = mapped_column(Text, nullable=True)
    timeout_ms: Mapped[int] = mapped_column(BigInteger)
    timeout_at: Mapped[datetime | None] = mapped_column(nullable=True)
    timeout_action: Mapped[str] = mapped_column(String(16))  # TimeoutAction
    inactivity_timeout_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    auto_delete_after_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_resume: Mapped[bool] = mapped_column(Boolean, default=False)
    traffic_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pause_snapshot_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    storage_dir: Mapped[str] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    resume_on_start: Mapped[bool] = mapped_column(Boolean, default=False)
    warm_pool_checkout: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    last_active_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    paused_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)


class MachineSnapshot(Base):
    """A machine's memory, device state and disk on disk: ``pause`` (its hibernation; one per paused machine)
    or ``reusable`` (``POST …/snapshots``, restorable into new machines any number of times)."""

    __tablename__ = "machine_snapshots"
    __table_args__ = (Index("ix_machine_snapshots_namespace", "namespace_id", "kind"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    namespace_id: Mapped[str] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    machine_id: Mapped[str] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "pause" | "reusable"
    storage_dir: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    user_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # What a machine restored from it runs as (the source machine's, at the snapshot).
    template_ref: Mapped[str] = mapped_column(Text)
    artifact_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int] = mapped_column(Integer)
    internet_access: Mapped[bool] = mapped_column(Boolean, default=True)
    cwd: Mapped[str | None] = mapped_column(Text, nullable=True)
    default_user: Mapped[str | None] = mapped_column(String(128), nullable=True)
    default_workdir: Mapped[str | None] = mapped_column(Text, nullable=True)
    env_keys: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)


class IdempotencyKey(Base):
    """One ``Idempotency-Key`` of one namespace for one operation: the first request's hash and, once it
    finished, its answer (replayed to retries). Bodies are hashed without env values and answers hold none."""

    __tablename__ = "idempotency_keys"

    namespace_id: Mapped[str] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), primary_key=True)
    operation: Mapped[str] = mapped_column(String(48), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # "pending" | "done"
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WarmPool(Base):
    """A template warm pool (``twp_…``): the desired inventory of parked machines of one template; the parked
    VMs themselves live in the memory of the server whose controller holds the pool's lease. Counters of what
    happened to its VMs (claimed, failed, expired) are kept here; what is ready or warming is counted live."""

    __tablename__ = "warm_pools"
    __table_args__ = (Index("ix_warm_pools_namespace", "namespace_id", "state"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    namespace_id: Mapped[str] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    template_ref: Mapped[str] = mapped_column(Text)
    resolved_template: Mapped[str | None] = mapped_column(String(40), nullable=True)  # artifact id (tmpl_…)
    resolved_template_build_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    runtime_artifact_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    previous_resolved_template: Mapped[str | None] = mapped_column(String(40), nullable=True)
    previous_resolved_template_build_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    previous_runtime_artifact_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    min_ready: Mapped[int] = mapped_column(Integer)
    max_ready: Mapped[int] = mapped_column(Integer)
    idle_timeout_seconds: Mapped[int] = mapped_column(Integer)
    stale_after_seconds: Mapped[int] = mapped_column(Integer)
    checkout_policy: Mapped[str] = mapped_column(String(16))
    version_policy: Mapped[str] = mapped_column(String(16))
    track_tag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    rollout_generation: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16))  # PoolState
    degraded_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    pool_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    claimed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    expired: Mapped[int] = mapped_column(Integer, default=0)
    # What the lease holder saw at its last reconcile (so every server answers with the same counts).
    ready_count: Mapped[int] = mapped_column(Integer, default=0)
    warming_count: Mapped[int] = mapped_column(Integer, default=0)
    draining_count: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    enabled_at: Mapped[datetime | None] = mapped_column(nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(nullable=True)
    drain_requested_at: Mapped[datetime | None] = mapped_column(nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_reconciled_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
