"""Machines, their snapshots, and idempotency keys.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "machines",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("namespace_id", sa.String(36), sa.ForeignKey("namespaces.id", ondelete="CASCADE"), nullable=False),
        sa.Column("template_ref", sa.Text, nullable=False),
        sa.Column("template_id", sa.String(40)),
        sa.Column("artifact_id", sa.String(40)),
        sa.Column("source_snapshot_id", sa.String(40)),
        sa.Column("parent_machine_id", sa.String(40)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("end_reason", sa.String(16)),
        sa.Column("error", sa.Text),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("disk_mb", sa.Integer, nullable=False),
        sa.Column("internet_access", sa.Boolean, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("env_keys", sa.JSON, nullable=False),
        sa.Column("cwd", sa.Text),
        sa.Column("default_user", sa.String(128)),
        sa.Column("default_workdir", sa.Text),
        sa.Column("timeout_ms", sa.BigInteger, nullable=False),
        sa.Column("timeout_at", sa.DateTime(timezone=True)),
        sa.Column("timeout_action", sa.String(16), nullable=False),
        sa.Column("inactivity_timeout_ms", sa.BigInteger),
        sa.Column("auto_delete_after_ms", sa.BigInteger),
        sa.Column("ephemeral", sa.Boolean, nullable=False),
        sa.Column("auto_resume", sa.Boolean, nullable=False),
        sa.Column("traffic_token_hash", sa.String(64)),
        sa.Column("pause_snapshot_id", sa.String(40)),
        sa.Column("storage_dir", sa.Text, nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("resume_on_start", sa.Boolean, nullable=False),
        sa.Column("warm_pool_checkout", sa.JSON),
        sa.Column("last_active_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("paused_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_machines_namespace_status", "machines", ["namespace_id", "status"])
    op.create_index("ix_machines_owner_status", "machines", ["owner", "status"])
    op.create_table(
        "machine_snapshots",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("namespace_id", sa.String(36), sa.ForeignKey("namespaces.id", ondelete="CASCADE"), nullable=False),
        sa.Column("machine_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("storage_dir", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("template_ref", sa.Text, nullable=False),
        sa.Column("artifact_id", sa.String(40)),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("disk_mb", sa.Integer, nullable=False),
        sa.Column("internet_access", sa.Boolean, nullable=False),
        sa.Column("cwd", sa.Text),
        sa.Column("default_user", sa.String(128)),
        sa.Column("default_workdir", sa.Text),
        sa.Column("env_keys", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_machine_snapshots_machine_id", "machine_snapshots", ["machine_id"])
    op.create_index("ix_machine_snapshots_namespace", "machine_snapshots", ["namespace_id", "kind"])
    op.create_table(
        "idempotency_keys",
        sa.Column("namespace_id", sa.String(36), sa.ForeignKey("namespaces.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("operation", sa.String(48), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("status_code", sa.Integer),
        sa.Column("response_json", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_index("ix_machine_snapshots_namespace", "machine_snapshots")
    op.drop_index("ix_machine_snapshots_machine_id", "machine_snapshots")
    op.drop_table("machine_snapshots")
    op.drop_index("ix_machines_owner_status", "machines")
    op.drop_index("ix_machines_namespace_status", "machines")
    op.drop_table("machines")
