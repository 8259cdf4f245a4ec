"""Template warm pools: the controller that keeps parked machines ready, and checkout at create.

A pool parks already-restored VMs of one template artifact (at the pool's shape: a runtime artifact when it
differs from the template's) so that ``Machine.create(warm_pool=…)`` returns without paying the restore.

Controller (one per server; a pool is warmed by the server holding its lease, ``store.warm_pools``), every
``warm_pool_tick_secs`` and on ``reconcile``:

1. Resolve the pool's artifact: ``pinned_build`` keeps the artifact resolved at create; ``track_tag`` re-resolves
   ``template_ref`` and, when its tag moved, rolls out: ``rollout_generation`` + 1, the previous identity kept in
   ``previous_*``, the old generation's parked VMs released.
2. Recycle: a parked VM older than ``min(idle_timeout_seconds, stale_after_seconds)`` is released (``expired``);
   beyond ``max_ready`` (after a scale-down) the oldest are released.
3. ``enabled``: start restores until ``ready + warming ≥ min_ready``, never beyond ``max_ready`` nor the host-wide
   ``warm_pool_max_parked`` (``degraded_reason: quota_exceeded`` when the host cap holds it back).
   ``disabled``: no refill; parked VMs stay until stale. ``draining``: every parked VM is released, then the pool
   is ``disabled``. ``deleted``: everything is released and the lease dropped.
4. Counts (ready, warming, draining) are written to the pool's row, so every server answers alike.

Checkout: the caller's own pool only (another namespace's is not found); mode ``bypass`` never looks; otherwise a
parked VM of the pool's current generation whose artifact, shape and internet access match the request is taken
— on the event loop, with no await between finding and taking it, so no VM is ever handed out twice — waiting up
to ``wait_ms`` for one to become ready. A miss falls back to a cold create (``prefer``) or fails with 503
``warm_pool_unavailable`` (``require``). The caller's env, timeouts and metadata apply at checkout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from amber.contract.errors import InvalidRequest
from amber.contract.machines import parse_model
from amber.contract.warm_pools import (
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_STALE_AFTER_SECONDS,
    CreateWarmPoolRequest,
    DegradedReason,
    PoolState,
    PoolStatus,
    UpdateWarmPoolRequest,
    check_counts,
    check_placement,
    check_resources,
    check_times,
    template_ref_of,
)
from amber.machines.background import Background
from amber.machines.errors import NotFoundProblem, Unavailable
from amber.machines.manager import MachineManager, owner_alive
from amber.machines.templates import TemplateRuntime, load_template_runtime
from amber.store import warm_pools as records
from amber.store.keys import Caller
from amber.store.models import Artifact, WarmPool, utcnow
from amber.vm import MicroVM

log = logging.getLogger("amber.machines.pools")

LEASE_SECS = 10.0


def new_pool_id() -> str:
    return "twp_" + os.urandom(8).hex()


@dataclass
class Parked:
    """A restored VM waiting in a pool for its machine."""

    vm: MicroVM
    pool_id: str
    generation: int
    artifact_id: str
    runtime: TemplateRuntime
    vcpus: int
    memory_mb: int
    parked_at: float = field(default_factory=time.monotonic)


@dataclass
class Inventory:
    """What this server holds for one pool."""

    ready: list[Parked] = field(default_factory=list)
    warming: int = 0
    draining: int = 0
    degraded: str | None = None


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PoolController:
    def __init__(self, manager: MachineManager) -> None:
        self.manager = manager
        self.db = manager.db
        self.settings = manager.settings
        self.owner = manager.owner
        self.inventory: dict[str, Inventory] = {}
        self.parked_changed = asyncio.Condition()
        self._background = Background("amber-warm-pools")
        self._reconciling: dict[str, asyncio.Lock] = {}
        self._kick = asyncio.Event()

    # ---- the loop ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._background.start(self._run())

    async def stop(self) -> None:
        await self._background.stop(cancel_spawned=True)
        for inventory in self.inventory.values():
            for parked in inventory.ready:
                await asyncio.to_thread(parked.vm.close)
            inventory.ready.clear()
        with contextlib.suppress(Exception):
            await self.db.run(lambda s: records.release_leases(s, self.owner))

    async def _run(self) -> None:
        while True:
            try:
                await self.reconcile_all()
            except Exception:
                log.exception("warm-pool reconcile failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.settings.warm_pool_tick_secs)
            self._kick.clear()

    def kick(self) -> None:
        """Reconcile soon (after a checkout or a change)."""
        self._kick.set()

    async def reconcile_all(self) -> None:
        def lease(session: Any) -> list[WarmPool]:
            for owner in records.lease_owners(session):
                if owner != self.owner and not owner_alive(owner):  # a dead server's pools are free at once
                    records.release_leases(session, owner)
            return records.lease_pools(session, self.owner, LEASE_SECS)

        pools = await self.db.run(lease)
        held = {p.id for p in pools}
        for pool_id in [p for p in self.inventory if p not in held]:  # a lease lost: its VMs are not ours to give
            await self._release_all(pool_id, count_as=None)
        for pool in pools:
            await self.reconcile(pool)

    async def reconcile(self, pool: WarmPool) -> WarmPool:
        lock = self._reconciling.setdefault(pool.id, asyncio.Lock())
        async with lock:
            return await self._reconcile(pool)

    async def _reconcile(self, pool: WarmPool) -> WarmPool:
        inventory = self.inventory.setdefault(pool.id, Inventory())
        if pool.state == PoolState.DELETED:
            await self._release_all(pool.id, count_as=None)
            if not inventory.warming:
                await self.db.run(lambda s: records.update_pool(s, pool.id, lease_owner=None, lease_expires_at=None,
                                                                ready_count=0, warming_count=0, draining_count=0))
                self.inventory.pop(pool.id, None)
            return pool
        pool = await self._follow_tag(pool)
        artifact = await self._artifact(pool)
        # Recycle what is stale or of an older generation.
        limit = min(pool.idle_timeout_seconds, pool.stale_after_seconds)
        now = time.monotonic()
        for parked in list(inventory.ready):
            if parked.generation != pool.rollout_generation:
                await self._release(pool.id, parked, count_as=None)
            elif now - parked.parked_at > limit:
                await self._release(pool.id, parked, count_as="expired")
        while len(inventory.ready) + inventory.warming > pool.max_ready and inventory.ready:  # scaled down
            await self._release(pool.id, inventory.ready[0], count_as=None)
        degraded: str | None = None
        if pool.state == PoolState.DRAINING:
            await self._release_all(pool.id, count_as=None)
            degraded = DegradedReason.DRAIN_ACTIVE
            if not inventory.warming and not inventory.ready:
                stamp = utcnow()
                await self.db.run(lambda s: records.update_pool(s, pool.id, state=PoolState.DISABLED,
                                                                disabled_at=stamp))
                pool.state, pool.disabled_at = PoolState.DISABLED, stamp
                degraded = None
        elif pool.state == PoolState.ENABLED:
            if artifact is None:
                degraded = DegradedReason.TEMPLATE_BUILD_UNAVAILABLE
            else:
                degraded = self._refill(pool, artifact, inventory)
        if degraded is None and inventory.degraded == DegradedReason.ARTIFACT_PREWARM_FAILED and not inventory.ready:
            degraded = DegradedReason.ARTIFACT_PREWARM_FAILED
        inventory.degraded = degraded
        stamp = utcnow()
        counts = {"ready_count": len(inventory.ready), "warming_count": inventory.warming,
                  "draining_count": inventory.draining}
        await self.db.run(lambda s: records.update_pool(s, pool.id, degraded_reason=degraded,
                                                        last_reconciled_at=stamp, **counts))
        fresh = await self.db.read(lambda s: records.pool_by_id(s, pool.id))
        return fresh or pool

    def _parked_total(self) -> int:
        return sum(len(i.ready) + i.warming for i in self.inventory.values())

    def _refill(self, pool: WarmPool, artifact: Artifact, inventory: Inventory) -> str | None:
        have = len(inventory.ready) + inventory.warming
        want = min(pool.min_ready, pool.max_ready) - have
        if want <= 0:
            return None
        room = self.settings.warm_pool_max_parked - self._parked_total()
        start = min(want, max(0, room))
        for _ in range(start):
            inventory.warming += 1
            self._background.spawn(self._warm(pool, artifact))
        return DegradedReason.QUOTA_EXCEEDED if start < want else None

    async def _warm(self, pool: WarmPool, artifact: Artifact) -> None:
        inventory = self.inventory.setdefault(pool.id, Inventory())
        try:
            runtime = await asyncio.to_thread(load_template_runtime, Path(artifact.storage_dir))
            vm = await self.manager.restore_template(runtime, pool.vcpus, pool.memory_mb, internet=True)
        except Exception as exc:
            inventory.degraded = DegradedReason.ARTIFACT_PREWARM_FAILED
            log.warning("warm pool %s: a restore failed: %s", pool.id, str(exc).splitlines()[0] if str(exc) else exc)
            await self.db.run(lambda s: records.count(s, pool.id, "failed"))
            return
        finally:
            inventory.warming -= 1
        inventory.ready.append(Parked(vm=vm, pool_id=pool.id, generation=pool.rollout_generation,
                                      artifact_id=artifact.id, runtime=runtime, vcpus=pool.vcpus,
                                      memory_mb=pool.memory_mb))
        if inventory.degraded == DegradedReason.ARTIFACT_PREWARM_FAILED:
            inventory.degraded = None
        async with self.parked_changed:
            self.parked_changed.notify_all()

    async def _release(self, pool_id: str, parked: Parked, *, count_as: str | None) -> None:
        inventory = self.inventory.setdefault(pool_id, Inventory())
        if parked in inventory.ready:
            inventory.ready.remove(parked)
        inventory.draining += 1
        try:
            await asyncio.to_thread(parked.vm.close)
        finally:
            inventory.draining -= 1
        if count_as is not None:
            await self.db.run(lambda s: records.count(s, pool_id, count_as))

    async def _release_all(self, pool_id: str, *, count_as: str | None) -> None:
        inventory = self.inventory.get(pool_id)
        if inventory is None:
            return
        for parked in list(inventory.ready):
            await self._release(pool_id, parked, count_as=count_as)

    async def _artifact(self, pool: WarmPool) -> Artifact | None:
        if pool.resolved_template is None:
            return None
        return await self.db.read(lambda s: s.get(Artifact, pool.resolved_template))

    async def _follow_tag(self, pool: WarmPool) -> WarmPool:
        """``track_tag`` pools: a moved tag starts a rollout (generation + 1, previous identity recorded)."""
        if pool.version_policy != "track_tag":
            return pool
        caller = Caller(key_id="warm-pool", namespace_id=pool.namespace_id, namespace_slug="")
        try:
            artifact = await self.manager.resolve_artifact(caller, tracked_ref(pool))
        except (NotFoundProblem, InvalidRequest):
            return pool
        if artifact.id == pool.resolved_template:
            return pool
        previous = (pool.resolved_template, pool.resolved_template_build_id, pool.runtime_artifact_id)

        def roll(session: Any) -> WarmPool | None:
            records.update_pool(session, pool.id, rollout_generation=pool.rollout_generation + 1,
                                previous_resolved_template=previous[0], previous_resolved_template_build_id=previous[1],
                                previous_runtime_artifact_id=previous[2], resolved_template=artifact.id,
                                resolved_template_build_id=artifact.build_id,
                                runtime_artifact_id=runtime_artifact_id(artifact, pool))
            return records.pool_by_id(session, pool.id)

        log.info("warm pool %s: %s moved to %s; rolling out generation %d", pool.id, tracked_ref(pool), artifact.id,
                 pool.rollout_generation + 1)
        return await self.db.run(roll) or pool

    # ---- checkout ---------------------------------------------------------------------------------------------

    async def checkout(self, caller: Caller, pool_id: str | None, mode: str | None, wait_ms: int | None, *,
                       artifact_id: str, vcpus: int, memory_mb: int, internet: bool
                       ) -> tuple[MicroVM | None, dict[str, Any]]:
        """A parked VM for this create, or None (with how the create went without one)."""
        pool = None
        if pool_id is not None:
            pool = await self.db.read(lambda s: records.get_pool(s, caller.namespace_id, pool_id))
            if pool is None:
                raise NotFoundProblem(f"warm pool {pool_id!r} not found")
        effective = mode or (pool.checkout_policy if pool is not None else "prefer")
        outcome: dict[str, Any] = {"id": pool_id, "mode": effective, "wait_ms": wait_ms}
        if effective == "bypass":
            return None, {**outcome, "source": "bypassed", "hit": False}
        if pool is None:
            raise InvalidRequest("warm_pool.id", f"mode {effective!r} needs the id of a warm pool")
        deadline = time.monotonic() + (wait_ms or 0) / 1000
        while True:
            parked = self._take(pool, artifact_id, vcpus, memory_mb, internet)
            if parked is not None:
                await self.db.run(lambda s: records.count(s, pool.id, "claimed"))
                self.kick()
                return parked.vm, {**outcome, "source": "ready_instance", "hit": True}
            left = deadline - time.monotonic()
            if left <= 0:
                break
            async with self.parked_changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.parked_changed.wait(), left)
        if effective == "require":
            raise Unavailable(f"warm pool {pool.id} had no ready machine of this template and shape within "
                              f"{wait_ms or 0} ms", code="warm_pool_unavailable")
        return None, {**outcome, "source": "cold_create", "hit": False}

    def _take(self, pool: WarmPool, artifact_id: str, vcpus: int, memory_mb: int, internet: bool) -> Parked | None:
        """Remove and return a matching parked VM (synchronous: nothing else runs between check and removal)."""
        inventory = self.inventory.get(pool.id)
        if inventory is None or not internet:
            return None
        for parked in inventory.ready:
            if (parked.artifact_id, parked.vcpus, parked.memory_mb) == (artifact_id, vcpus, memory_mb) and \
                    parked.vm.alive():
                inventory.ready.remove(parked)
                return parked
        return None

    def counts(self, pool: WarmPool) -> tuple[int, int, int]:
        """(ready, warming, draining): live when this server holds the pool, else as its holder last wrote."""
        inventory = self.inventory.get(pool.id)
        if inventory is not None and pool.lease_owner == self.owner:
            return len(inventory.ready), inventory.warming, inventory.draining
        return pool.ready_count, pool.warming_count, pool.draining_count


def tracked_ref(pool: WarmPool) -> str:
    """The ref a ``track_tag`` pool follows: ``template_ref`` with ``track_tag`` as its tag."""
    if not pool.track_tag:
        return pool.template_ref
    base = pool.template_ref.rsplit(":", 1)[0] if ":" in pool.template_ref.rsplit("/", 1)[-1] else pool.template_ref
    return f"{base}:{pool.track_tag}"


def runtime_artifact_id(artifact: Artifact, pool: WarmPool) -> str:
    return f"{artifact.id}@{pool.vcpus}c{pool.memory_mb}m"


# ---- the API's service ----------------------------------------------------------------------------------------


class WarmPools:
    """The ten warm-pool endpoints over the controller."""

    def __init__(self, controller: PoolController) -> None:
        self.controller = controller
        self.manager = controller.manager
        self.db = controller.db

    async def _pool(self, caller: Caller, pool_id: str) -> WarmPool:
        pool = await self.db.read(lambda s: records.get_pool(s, caller.namespace_id, pool_id))
        if pool is None:
            raise NotFoundProblem(f"warm pool {pool_id!r} not found")
        return pool

    async def create(self, caller: Caller, body: Any) -> dict[str, Any]:
        req = parse_model(CreateWarmPoolRequest, body, "CreateTemplateWarmPoolRequest")
        ref = template_ref_of(req)
        if not ref:
            raise InvalidRequest("template_ref", "is required")
        if not req.name.strip():
            raise InvalidRequest("name", "must not be empty")
        check_counts(req.min_ready, req.max_ready)
        check_times(req.idle_timeout_seconds, req.stale_after_seconds)
        check_resources(req.resources)
        check_placement(req.host_pool_id, req.cell_id)
        policy = req.version_policy or "pinned_build"
        if policy == "track_tag" and not req.track_tag and ":" not in ref.rsplit("/", 1)[-1]:
            raise InvalidRequest("track_tag", "is required when version_policy is track_tag and template_ref has "
                                              "no tag")
        track_tag = req.track_tag
        if policy == "track_tag" and not track_tag:
            track_tag = ref.rsplit(":", 1)[1]
        now = utcnow()
        pool = WarmPool(
            id=new_pool_id(), namespace_id=caller.namespace_id, name=req.name, template_ref=ref,
            vcpus=req.resources.vcpus, memory_mb=req.resources.memory_mb, disk_mb=req.resources.disk_mb,
            min_ready=req.min_ready, max_ready=req.max_ready,
            idle_timeout_seconds=req.idle_timeout_seconds or DEFAULT_IDLE_TIMEOUT_SECONDS,
            stale_after_seconds=req.stale_after_seconds or DEFAULT_STALE_AFTER_SECONDS,
            checkout_policy=req.checkout_policy or "prefer", version_policy=policy, track_tag=track_tag,
            rollout_generation=1, state=PoolState.ENABLED, labels=dict(req.labels or {}),
            pool_metadata=dict(req.metadata or {}), claimed=0, failed=0, expired=0, ready_count=0, warming_count=0,
            draining_count=0, enabled_at=now, created_at=now, updated_at=now)
        await self._resolve_into(caller, pool, ref if policy == "pinned_build" else tracked_ref(pool))
        await self.db.run(lambda s: records.add_pool(s, pool))
        self.controller.kick()
        return self.view(pool)

    async def _resolve_into(self, caller: Caller, pool: WarmPool, ref: str) -> None:
        """Resolve the pool's template now (404 for an unknown ref) and check its shape restores."""
        artifact = await self.manager.resolve_artifact(caller, ref)
        runtime = await asyncio.to_thread(load_template_runtime, Path(artifact.storage_dir))
        if pool.disk_mb is not None and pool.disk_mb > runtime.disk_mb:
            raise InvalidRequest("resources.disk_mb", f"{pool.disk_mb} MiB exceeds the template's built-in disk "
                                                      f"of {runtime.disk_mb} MiB")
        self.manager.check_shape(pool.vcpus, pool.memory_mb, field="resources")
        pool.resolved_template, pool.resolved_template_build_id = artifact.id, artifact.build_id
        pool.runtime_artifact_id = runtime_artifact_id(artifact, pool)

    async def list(self, caller: Caller, *, template: str | None, state: str | None, status: str | None,
                   labels: list[str], limit: int | None) -> dict[str, Any]:
        if state is not None and state not in {str(s) for s in PoolState}:
            raise InvalidRequest("state", f"unknown state {state!r}")
        if status is not None and status not in {str(s) for s in PoolStatus}:
            raise InvalidRequest("status", f"unknown status {status!r}")
        wanted: dict[str, str] = {}
        for label in labels:
            key, sep, value = label.partition("=")
            if not sep or not key:
                raise InvalidRequest("label", f"{label!r} is not KEY=VALUE")
            wanted[key] = value
        if limit is not None and limit < 1:
            raise InvalidRequest("limit", "must be a positive integer")
        pools = await self.db.read(lambda s: records.list_pools(s, caller.namespace_id, template=template, state=state))
        out = []
        for pool in pools:
            if any(str(pool.labels.get(k)) != v for k, v in wanted.items()):
                continue
            view = self.view(pool)
            if status is not None and derived_status(view) != status:
                continue
            out.append(view)
            if limit is not None and len(out) >= limit:
                break
        return {"items": out}

    async def get(self, caller: Caller, pool_id: str) -> dict[str, Any]:
        return self.view(await self._pool(caller, pool_id))

    async def status(self, caller: Caller, pool_id: str) -> dict[str, Any]:
        return dict(self.view(await self._pool(caller, pool_id))["status"])

    async def update(self, caller: Caller, pool_id: str, body: Any) -> dict[str, Any]:
        pool = await self._pool(caller, pool_id)
        req = parse_model(UpdateWarmPoolRequest, body, "UpdateTemplateWarmPoolRequest")
        given = req.model_fields_set | set(req.model_extra or {})
        values: dict[str, Any] = {}
        min_ready = req.min_ready if req.min_ready is not None else pool.min_ready
        max_ready = req.max_ready if req.max_ready is not None else pool.max_ready
        check_counts(min_ready, max_ready)
        check_times(req.idle_timeout_seconds, req.stale_after_seconds)
        if ("host_pool_id" in given and req.host_pool_id is not None) or ("cell_id" in given and req.cell_id):
            check_placement(req.host_pool_id, req.cell_id)
        values.update(min_ready=min_ready, max_ready=max_ready)
        for name in ("idle_timeout_seconds", "stale_after_seconds", "checkout_policy"):
            if getattr(req, name) is not None:
                values[name] = getattr(req, name)
        if req.name is not None:
            if not req.name.strip():
                raise InvalidRequest("name", "must not be empty")
            values["name"] = req.name
        if req.labels is not None:
            values["labels"] = dict(req.labels)
        if req.metadata is not None:
            values["pool_metadata"] = dict(req.metadata)
        identity_changed = False
        if req.resources is not None:
            check_resources(req.resources)
            if (req.resources.vcpus, req.resources.memory_mb, req.resources.disk_mb) != (
                    pool.vcpus, pool.memory_mb, pool.disk_mb):
                values.update(vcpus=req.resources.vcpus, memory_mb=req.resources.memory_mb,
                              disk_mb=req.resources.disk_mb)
                identity_changed = True
        ref = template_ref_of(req)
        if ref is not None and ref != pool.template_ref:
            values["template_ref"] = ref
            identity_changed = True
        if req.version_policy is not None and req.version_policy != pool.version_policy:
            values["version_policy"] = req.version_policy
            identity_changed = True
        if "track_tag" in given and req.track_tag != pool.track_tag:
            values["track_tag"] = req.track_tag
            identity_changed = True
        if identity_changed:
            for key, value in values.items():
                setattr(pool, "pool_metadata" if key == "pool_metadata" else key, value)
            if pool.version_policy == "track_tag" and not pool.track_tag and \
                    ":" not in pool.template_ref.rsplit("/", 1)[-1]:
                raise InvalidRequest("track_tag", "is required when version_policy is track_tag")
            previous = (pool.resolved_template, pool.resolved_template_build_id, pool.runtime_artifact_id)
            await self._resolve_into(caller, pool, pool.template_ref if pool.version_policy == "pinned_build"
                                     else tracked_ref(pool))
            values.update(resolved_template=pool.resolved_template,
                          resolved_template_build_id=pool.resolved_template_build_id,
                          runtime_artifact_id=pool.runtime_artifact_id, previous_resolved_template=previous[0],
                          previous_resolved_template_build_id=previous[1], previous_runtime_artifact_id=previous[2],
                          rollout_generation=pool.rollout_generation + 1)
        await self.db.run(lambda s: records.update_pool(s, pool_id, **values))
        self.controller.kick()
        return await self.get(caller, pool_id)

    async def set_state(self, caller: Caller, pool_id: str, action: str) -> dict[str, Any]:
        await self._pool(caller, pool_id)
        now = utcnow()
        values: dict[str, Any]
        if action == "enable":
            values = {"state": PoolState.ENABLED, "enabled_at": now}
        elif action == "disable":
            values = {"state": PoolState.DISABLED, "disabled_at": now}
        elif action == "drain":
            values = {"state": PoolState.DRAINING, "drain_requested_at": now}
        else:  # delete: drain, then gone (checked-out machines are not touched)
            values = {"state": PoolState.DELETED, "deleted_at": now, "drain_requested_at": now}
        await self.db.run(lambda s: records.update_pool(s, pool_id, **values))
        fresh = await self.db.read(lambda s: records.pool_by_id(s, pool_id))
        assert fresh is not None
        if fresh.lease_owner == self.controller.owner:
            fresh = await self.controller.reconcile(fresh)
        self.controller.kick()
        return self.view(fresh)

    async def reconcile(self, caller: Caller, pool_id: str) -> dict[str, Any]:
        """Run the controller once for this pool (taking its lease if it is free) and return the fresh row."""
        await self._pool(caller, pool_id)
        pools = await self.db.run(lambda s: records.lease_pools(s, self.controller.owner, LEASE_SECS))
        for pool in pools:
            if pool.id == pool_id:
                await self.controller.reconcile(pool)
        return await self.get(caller, pool_id)

    def view(self, pool: WarmPool) -> dict[str, Any]:
        """TemplateWarmPool (machines-api.md §2.2)."""
        ready, warming, draining = self.controller.counts(pool)
        degraded = pool.degraded_reason
        target = pool.min_ready if pool.state == PoolState.ENABLED else 0
        unavailable = max(0, target - ready - warming) if degraded else 0
        status = {"target": target, "ready": ready, "warming": warming, "claimed": pool.claimed,
                  "draining": draining, "failed": pool.failed, "expired": pool.expired, "unavailable": unavailable}
        resources: dict[str, Any] = {"vcpus": pool.vcpus, "memory_mb": pool.memory_mb}
        if pool.disk_mb is not None:
            resources["disk_mb"] = pool.disk_mb
        identity = {"template": pool.resolved_template, "resolved_template_build_id": pool.resolved_template_build_id,
                    "runtime_artifact_id": pool.runtime_artifact_id}
        rollout = {"version_policy": pool.version_policy, "track_tag": pool.track_tag,
                   "rollout_generation": pool.rollout_generation, "updated_at": _ts(pool.updated_at),
                   "current_identity": identity,
                   "current_counts": {"ready": ready, "warming": warming, "claimed": pool.claimed,
                                      "failed": pool.failed, "draining": draining, "released": pool.expired,
                                      "other": 0}}
        return {
            "id": pool.id, "name": pool.name, "template_ref": pool.template_ref,
            "resolved_template": pool.resolved_template, "resolved_template_build_id": pool.resolved_template_build_id,
            "runtime_artifact_id": pool.runtime_artifact_id, "resources": resources, "min_ready": pool.min_ready,
            "max_ready": pool.max_ready, "idle_timeout_seconds": pool.idle_timeout_seconds,
            "stale_after_seconds": pool.stale_after_seconds, "checkout_policy": pool.checkout_policy,
            "version_policy": pool.version_policy, "track_tag": pool.track_tag,
            "rollout_generation": pool.rollout_generation, "rollout_status": rollout, "status": status,
            "state": pool.state, "degraded_reason": degraded, "labels": dict(pool.labels or {}),
            "metadata": dict(pool.pool_metadata or {}), "host_pool_id": None, "cell_id": None,
            "compatibility_key": None, "previous_resolved_template": pool.previous_resolved_template,
            "previous_resolved_template_build_id": pool.previous_resolved_template_build_id,
            "previous_runtime_artifact_id": pool.previous_runtime_artifact_id,
            "enabled_at": _ts(pool.enabled_at), "disabled_at": _ts(pool.disabled_at),
            "drain_requested_at": _ts(pool.drain_requested_at), "deleted_at": _ts(pool.deleted_at),
            "last_reconciled_at": _ts(pool.last_reconciled_at), "created_at": _ts(pool.created_at),
            "updated_at": _ts(pool.updated_at),
        }


def derived_status(view: dict[str, Any]) -> str:
    """The list filter's ``status`` of a pool view."""
    counts = view["status"]
    if view["state"] == PoolState.DRAINING:
        return PoolStatus.DRAINING
    if view["degraded_reason"]:
        return PoolStatus.UNAVAILABLE if counts["ready"] == 0 and counts["warming"] == 0 else PoolStatus.DEGRADED
    if counts["ready"] >= counts["target"]:
        return PoolStatus.READY
    return PoolStatus.WARMING

