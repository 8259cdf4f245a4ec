"""Template warm pools (machines-api.md §2): request models, closed sets, and the rules that need no database.

A pool keeps already-restored machines of one template artifact parked, so ``Machine.create(warm_pool=…)``
returns without paying the restore. Enum values are the SDK's (it checks them with ``Enum(value)``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from amber.contract._models import OpenModel
from amber.contract.errors import InvalidRequest

DEFAULT_IDLE_TIMEOUT_SECONDS = 600
DEFAULT_STALE_AFTER_SECONDS = 900
MAX_READY_LIMIT = 64  # per pool; the host-wide cap on parked VMs applies across pools


class PoolState(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    DRAINING = "draining"
    DELETED = "deleted"


class PoolStatus(StrEnum):
    """The derived ``status`` filter of the list endpoint."""

    DEGRADED = "degraded"
    DRAINING = "draining"
    READY = "ready"
    UNAVAILABLE = "unavailable"
    WARMING = "warming"


class DegradedReason(StrEnum):
    ARTIFACT_NOT_READY = "artifact_not_ready"
    ARTIFACT_PREWARM_FAILED = "artifact_prewarm_failed"
    CONTROLLER_DISABLED = "controller_disabled"
    DRAIN_ACTIVE = "drain_active"
    NO_ELIGIBLE_HOSTS = "no_eligible_hosts"
    QUOTA_EXCEEDED = "quota_exceeded"
    TEMPLATE_BUILD_UNAVAILABLE = "template_build_unavailable"


class PoolResources(OpenModel):
    vcpus: int
    memory_mb: int
    disk_mb: int | None = None


class CreateWarmPoolRequest(OpenModel):
    name: str
    template_ref: str | None = None
    template: str | None = None  # alias of template_ref kept for SDK compatibility
    min_ready: int
    max_ready: int
    resources: PoolResources
    checkout_policy: Literal["bypass", "prefer", "require"] | None = None
    idle_timeout_seconds: int | None = None
    stale_after_seconds: int | None = None
    version_policy: Literal["pinned_build", "track_tag"] | None = None
    track_tag: str | None = None
    host_pool_id: str | None = None
    cell_id: str | None = None
    labels: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = Field(default=None)


class UpdateWarmPoolRequest(OpenModel):
    name: str | None = None
    template_ref: str | None = None
    template: str | None = None
    min_ready: int | None = None
    max_ready: int | None = None
    resources: PoolResources | None = None
    checkout_policy: Literal["bypass", "prefer", "require"] | None = None
    idle_timeout_seconds: int | None = None
    stale_after_seconds: int | None = None
    version_policy: Literal["pinned_build", "track_tag"] | None = None
    track_tag: str | None = None
    host_pool_id: str | None = None
    cell_id: str | None = None
    labels: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


def check_counts(min_ready: int, max_ready: int) -> None:
    if min_ready < 0:
        raise InvalidRequest("min_ready", "must not be negative")
    if max_ready < 0:
        raise InvalidRequest("max_ready", "must not be negative")
    if max_ready < min_ready:
        raise InvalidRequest("max_ready", f"must be at least min_ready ({min_ready})")
    if max_ready > MAX_READY_LIMIT:
        raise InvalidRequest("max_ready", f"at most {MAX_READY_LIMIT} per pool")


def check_times(idle: int | None, stale: int | None) -> None:
    if idle is not None and idle < 1:
        raise InvalidRequest("idle_timeout_seconds", "must be at least 1")
    if stale is not None and stale < 1:
        raise InvalidRequest("stale_after_seconds", "must be at least 1")


def check_resources(resources: PoolResources) -> None:
    if resources.vcpus < 1:
        raise InvalidRequest("resources.vcpus", "must be a positive integer")
    if resources.memory_mb < 128:
        raise InvalidRequest("resources.memory_mb", "must be at least 128")
    if resources.disk_mb is not None and resources.disk_mb < 1:
        raise InvalidRequest("resources.disk_mb", "must be a positive integer")


def check_placement(host_pool_id: str | None, cell_id: str | None) -> None:
    """Multi-host placement is not offered: every pool lives on the server that runs its controller."""
    if host_pool_id is not None or cell_id is not None:
        raise InvalidRequest("host_pool_id" if host_pool_id is not None else "cell_id",
                             "host pools and cells are not available on this server (single-host placement)")


def template_ref_of(req: CreateWarmPoolRequest | UpdateWarmPoolRequest) -> str | None:
    return req.template_ref if req.template_ref is not None else req.template
