"""Machine records → the contract's JSON (pure): MachineInfo, CreateMachineResponse, MachineHandle,
SnapshotInfo and SetTimeoutResponse.

Rules M1/M2: every machine body has ``id``, ``status``, ``template``, ``created_at`` and ``config`` with
``vcpus`` and ``memory_mb``; SnapshotInfo has only ``id``, ``machine_id``, ``size_bytes``, ``created_at`` and
``metadata``. Env values never appear (records do not hold them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from amber.store.models import Machine, MachineSnapshot, utcnow

# The strict generated models accept null only for these; every other optional key is left out when unset.
NULLABLE = frozenset({"last_active_at", "inactivity_timeout_ms", "auto_delete_after_ms", "symlink_target",
                      "exit_code"})


def _without_nulls(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in out.items() if v is not None or k in NULLABLE}


def ts(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def config(row: Machine) -> dict[str, int]:
    return {"vcpus": row.vcpus, "memory_mb": row.memory_mb, "disk_mb": row.disk_mb}


def remaining_ms(row: Machine, now: datetime | None = None) -> int | None:
    if row.timeout_at is None or row.status not in ("running", "creating"):
        return None
    left = (row.timeout_at - (now or utcnow())).total_seconds() * 1000
    return max(0, int(left))


def machine_info(row: Machine, *, last_active_at: datetime | None = None) -> dict[str, Any]:
    """MachineInfo (GET, list). ``last_active_at`` overrides the stored one (the live value is fresher)."""
    out: dict[str, Any] = {
        "id": row.id,
        "status": row.status,
        "config": config(row),
        "template": row.template_ref,
        "created_at": ts(row.created_at),
        "metadata": dict(row.user_metadata or {}),
        "started_at": ts(row.started_at),
        "timeout_ms": row.timeout_ms,
        "timeout_action": row.timeout_action,
        "cwd": row.cwd,
        "inactivity_timeout_ms": row.inactivity_timeout_ms,
        "auto_delete_after_ms": row.auto_delete_after_ms,
        "ephemeral": row.ephemeral,
        "last_active_at": ts(last_active_at or row.last_active_at),
    }
    if row.status in ("running", "creating") and row.timeout_at is not None:
        out["timeout_at"] = out["expires_at"] = ts(row.timeout_at)
        out["remaining_ms"] = remaining_ms(row)
    if row.status == "paused" and row.pause_snapshot_id:
        out["snapshot_id"] = row.pause_snapshot_id
    if row.warm_pool_checkout is not None:
        out["warm_pool_checkout"] = row.warm_pool_checkout
    if row.end_reason:
        out["end_reason"] = row.end_reason
    if row.error:
        out["error"] = row.error
    return _without_nulls(out)


def created(row: Machine, traffic_access_token: str | None) -> dict[str, Any]:
    """CreateMachineResponse: the MachineInfo keys it allows, plus the traffic token (only ever shown here)."""
    info = machine_info(row)
    keep = ("id", "status", "config", "template", "created_at", "metadata", "started_at", "timeout_ms", "timeout_at",
            "expires_at", "timeout_action", "cwd", "warm_pool_checkout")
    out = {k: info[k] for k in keep if k in info}
    if traffic_access_token is not None:
        out["traffic_access_token"] = traffic_access_token
    return out


def handle(row: Machine) -> dict[str, Any]:
    """MachineHandle (resume, fork): ``id``, ``status``, ``config`` (with vcpus and memory_mb), ``cwd``."""
    return _without_nulls({"id": row.id, "status": row.status, "config": config(row), "cwd": row.cwd})


def snapshot_info(row: MachineSnapshot) -> dict[str, Any]:
    """SnapshotInfo: exactly its five keys (M2)."""
    return {"id": row.id, "machine_id": row.machine_id, "size_bytes": row.size_bytes,
            "created_at": ts(row.created_at), "metadata": dict(row.user_metadata or {})}


def timeout_lease(row: Machine) -> dict[str, Any]:
    """SetTimeoutResponse."""
    return _without_nulls({"timeout_ms": row.timeout_ms, "timeout_action": row.timeout_action,
                           "timeout_at": ts(row.timeout_at), "remaining_ms": remaining_ms(row)})
