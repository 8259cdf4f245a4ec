"""Template warm pools.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "warm_pools",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("namespace_id", sa.String(36), sa.ForeignKey("namespaces.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("template_ref", sa.Text, nullable=False),
        sa.Column("resolved_template", sa.String(40)),
        sa.Column("resolved_template_build_id", sa.String(40)),
        sa.Column("runtime_artifact_id", sa.String(80)),
        sa.Column("previous_resolved_template", sa.String(40)),
        sa.Column("previous_resolved_template_build_id", sa.String(40)),
        sa.Column("previous_runtime_artifact_id", sa.String(80)),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("disk_mb", sa.Integer),
        sa.Column("min_ready", sa.Integer, nullable=False),
        sa.Column("max_ready", sa.Integer, nullable=False),
        sa.Column("idle_timeout_seconds", sa.Integer, nullable=False),
        sa.Column("stale_after_seconds", sa.Integer, nullable=False),
        sa.Column("checkout_policy", sa.String(16), nullable=False),
        sa.Column("version_policy", sa.String(16), nullable=False),
        sa.Column("track_tag", sa.String(128)),
        sa.Column("rollout_generation", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("degraded_reason", sa.String(40)),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("claimed", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("expired", sa.Integer, nullable=False),
        sa.Column("ready_count", sa.Integer, nullable=False),
        sa.Column("warming_count", sa.Integer, nullable=False),
        sa.Column("draining_count", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("enabled_at", sa.DateTime(timezone=True)),
        sa.Column("disabled_at", sa.DateTime(timezone=True)),
        sa.Column("drain_requested_at", sa.DateTime(timezone=True)),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("last_reconciled_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_warm_pools_namespace", "warm_pools", ["namespace_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_warm_pools_namespace", "warm_pools")
    op.drop_table("warm_pools")
