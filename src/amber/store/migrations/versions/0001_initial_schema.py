"""Initial schema: namespaces, keys, templates, artifacts, builds, log entries, tags, aliases, claims, blobs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "namespaces",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("slug"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("namespace_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["namespace_id"], ["namespaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_table(
        "blobs",
        sa.Column("id", sa.String(length=48), nullable=False),
        sa.Column("namespace_id", sa.String(length=36), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["namespace_id"], ["namespaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.create_index("ix_blobs_namespace_sha", ["namespace_id", "sha256"], unique=False)

    op.create_table(
        "name_claims",
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("namespace_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["namespace_id"], ["namespaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token"),
    )
    with op.batch_alter_table("name_claims", schema=None) as batch_op:
        batch_op.create_index("ix_name_claims_namespace_name", ["namespace_id", "name"], unique=False)

    op.create_table(
        "templates",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("namespace_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("default_tag", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["namespace_id"], ["namespaces.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("namespace_id", "name", name="uq_templates_namespace_name"),
    )
    op.create_table(
        "aliases",
        sa.Column("namespace_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("template_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["namespace_id"], ["namespaces.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("namespace_id", "name"),
    )
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aliases_template_id"), ["template_id"], unique=False)

    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("template_id", sa.String(length=40), nullable=False),
        sa.Column("build_id", sa.String(length=40), nullable=False),
        sa.Column("storage_dir", sa.Text(), nullable=False),
        sa.Column("runtime_defaults", sa.JSON(), nullable=False),
        sa.Column("oci_metadata", sa.JSON(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("build_id"),
    )
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_artifacts_template_id"), ["template_id"], unique=False)

    op.create_table(
        "builds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("namespace_id", sa.String(length=36), nullable=False),
        sa.Column("template_id", sa.String(length=40), nullable=False),
        sa.Column("artifact_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("build_backend", sa.String(length=16), nullable=False),
        sa.Column("source_type", sa.String(length=16), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("base_image_auth_kind", sa.String(length=32), nullable=True),
        sa.Column("registry_auth_hosts", sa.JSON(), nullable=False),
        sa.Column("secret_ids", sa.JSON(), nullable=False),
        sa.Column("inline_context", sa.Boolean(), nullable=False),
        sa.Column("pinned_worker", sa.String(length=128), nullable=True),
        sa.Column("build_config", sa.JSON(), nullable=False),
        sa.Column("triggered_by", sa.String(length=64), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("retry_of_build_id", sa.String(length=40), nullable=True),
        sa.Column("original_build_id", sa.String(length=40), nullable=True),
        sa.Column("source_digest", sa.String(length=80), nullable=True),
        sa.Column("context_digest", sa.String(length=80), nullable=True),
        sa.Column("dockerfile_digest", sa.String(length=80), nullable=True),
        sa.Column("cache_summary", sa.JSON(), nullable=True),
        sa.Column("runtime_defaults", sa.JSON(), nullable=True),
        sa.Column("oci_metadata", sa.JSON(), nullable=True),
        sa.Column("failure_phase", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_detail", sa.JSON(), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested_by", sa.String(length=64), nullable=True),
        sa.Column("cancellation_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("log_next_offset", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["namespace_id"], ["namespaces.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_builds_namespace_id"), ["namespace_id"], unique=False)
        batch_op.create_index("ix_builds_status_created", ["status", "created_at"], unique=False)
        batch_op.create_index("ix_builds_template_created", ["template_id", "created_at"], unique=False)

    op.create_table(
        "tag_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("template_id", sa.String(length=40), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("artifact_id", sa.String(length=40), nullable=True),
        sa.Column("build_id", sa.String(length=40), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tag_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tag_events_template_id"), ["template_id"], unique=False)

    op.create_table(
        "build_log_entries",
        sa.Column("build_id", sa.String(length=40), nullable=False),
        sa.Column("offset", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entry_json", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["build_id"], ["builds.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("build_id", "offset"),
    )
    op.create_table(
        "tags",
        sa.Column("template_id", sa.String(length=40), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("artifact_id", sa.String(length=40), nullable=False),
        sa.Column("build_id", sa.String(length=40), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["template_id"], ["templates.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("template_id", "tag"),
    )
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tags_artifact_id"), ["artifact_id"], unique=False)

    namespaces = sa.table(
        "namespaces",
        sa.column("id", sa.String),
        sa.column("slug", sa.String),
        sa.column("kind", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    # The builtin namespace exists on every deployment (refs like nullspace/base:latest resolve into it).
    op.bulk_insert(
        namespaces,
        [
            {
                "id": "00000000-0000-0000-0000-000000000000",
                "slug": "nullspace",
                "kind": "system",
                "created_at": datetime(2026, 1, 1, tzinfo=UTC),
            }
        ],
    )


def downgrade() -> None:

    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tags_artifact_id"))

    op.drop_table("tags")
    op.drop_table("build_log_entries")
    with op.batch_alter_table("tag_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tag_events_template_id"))

    op.drop_table("tag_events")
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.drop_index("ix_builds_template_created")
        batch_op.drop_index("ix_builds_status_created")
        batch_op.drop_index(batch_op.f("ix_builds_namespace_id"))

    op.drop_table("builds")
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_artifacts_template_id"))

    op.drop_table("artifacts")
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aliases_template_id"))

    op.drop_table("aliases")
    op.drop_table("templates")
    with op.batch_alter_table("name_claims", schema=None) as batch_op:
        batch_op.drop_index("ix_name_claims_namespace_name")

    op.drop_table("name_claims")
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.drop_index("ix_blobs_namespace_sha")

    op.drop_table("blobs")
    op.drop_table("api_keys")
    op.drop_table("namespaces")
