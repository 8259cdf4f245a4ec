"""Reusable machine snapshots and forks (machines-api.md §5.10).

``capture`` pauses a running machine only for the copy of its memory and device state (``MicroVM.live_snapshot``):
its disk overlay is frozen into a read-only layer and the machine keeps running on a fresh one. The snapshot is
an artifact directory under ``<data_dir>/snapshots/<id>/`` that shares the template's disk layers and memory file
(hard links) and holds only what the machine changed: its frozen overlays, and its memory image (``state.bin``,
zero pages skipped). ``processes.json`` beside it lets machines restored from it follow the background commands
that were running.

Kinds: ``reusable`` (``POST …/snapshots``: listed, restorable any number of times with ``POST /v1/machines
{snapshot_id}``, one child per idempotency key; ``DELETE`` is refused with 409 ``snapshot_in_use`` while a machine
restored from it exists) and ``fork`` (``POST …/fork``: the snapshot of one fork, never listed, removed with its
child). Storage is reclaimed when a snapshot is deleted or its fork child destroyed: its directory goes, and the
hard-linked layers live on in whatever else links them (the template, other snapshots, hibernations).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from datetime import UTC, datetime
from typing import Any

from amber.contract.machines import CreateMachineRequest, MachineStatus
from amber.machines import views
from amber.machines.errors import ConflictProblem, NotFoundProblem, NotReady
from amber.machines.manager import PROCESSES_FILE, MachineManager, new_snapshot_id
from amber.store import machines as records
from amber.store.keys import Caller
from amber.store.models import MachineSnapshot
from amber.vm import TemplateArtifact, VMError

log = logging.getLogger("amber.machines")

CREATE_SNAPSHOT = "create_snapshot"
FORK = "fork_machine"


class Snapshots:
    def __init__(self, manager: MachineManager) -> None:
        self.manager = manager
        self.root = manager.data_dir / "snapshots"

    # ---- capture ------------------------------------------------------------------------------------------------

    async def create(self, caller: Caller, machine_id: str, idempotency_key: str | None) -> dict[str, Any]:
        async def make() -> dict[str, Any]:
            return views.snapshot_info(await self._capture(caller, machine_id, "reusable"))

        return await self.manager.once(caller, f"{CREATE_SNAPSHOT}:{machine_id}", idempotency_key, machine_id, make)

    async def _capture(self, caller: Caller, machine_id: str, kind: str) -> MachineSnapshot:
        row = await self.manager.get_row(caller, machine_id)
        if row.status != MachineStatus.RUNNING:
            raise NotReady(f"machine {machine_id} is {row.status}: only a running machine can be snapshotted")
        live = await self.manager.live_for(caller, machine_id, resume=False)
        snapshot_id = new_snapshot_id()
        target = self.root / snapshot_id
        async with live.transition:
            if live.stopping or self.manager.live_machine(machine_id) is not live:
                raise NotReady(f"machine {machine_id} is no longer running")
            state: dict[str, Any] = {}
            next_overlay = live.vm.run_dir / f"overlay-{snapshot_id}.qcow2"
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
            try:
                artifact = await asyncio.to_thread(live.vm.live_snapshot, target, next_overlay,
                                                   lambda: state.update(live.process_state()))
            except VMError as exc:
                raise ConflictProblem(f"the snapshot of {machine_id} failed: {str(exc).splitlines()[0]}") from None
            await asyncio.to_thread((target / PROCESSES_FILE).write_text, json.dumps(state))
        size = _written_bytes(artifact)
        snapshot = MachineSnapshot(
            id=snapshot_id, namespace_id=row.namespace_id, machine_id=machine_id, kind=kind, storage_dir=str(target),
            size_bytes=size, user_metadata=dict(row.user_metadata or {}), template_ref=row.template_ref,
            artifact_id=row.artifact_id, vcpus=row.vcpus, memory_mb=row.memory_mb, disk_mb=row.disk_mb,
            internet_access=row.internet_access, cwd=row.cwd, default_user=row.default_user,
            default_workdir=row.default_workdir, env_keys=list(row.env_keys), created_at=datetime.now(UTC))
        await self.manager.db.run(lambda s: records.add_snapshot(s, snapshot))
        live.touch()
        log.info("machine %s: %s snapshot %s (%d MB written, paused %.3f s)", machine_id, kind, snapshot_id,
                 size >> 20, artifact.snapshot_seconds)
        return snapshot

    # ---- fork ---------------------------------------------------------------------------------------------------

    async def fork(self, caller: Caller, machine_id: str, idempotency_key: str | None) -> dict[str, Any]:
        """A child restored from a fresh snapshot of the running parent: the same files, memory and processes as
        of the fork; the two diverge afterwards. The child keeps the parent's timeouts and metadata."""

        async def make() -> dict[str, Any]:
            parent = await self.manager.get_row(caller, machine_id)
            snapshot = await self._capture(caller, machine_id, "fork")
            req = CreateMachineRequest(
                snapshot_id=snapshot.id, timeout_ms=parent.timeout_ms, metadata=dict(parent.user_metadata or {}),
                timeout_action=parent.timeout_action,  # type: ignore[arg-type]
                inactivity_timeout_ms=parent.inactivity_timeout_ms, ephemeral=parent.ephemeral,
                auto_resume=parent.auto_resume, auto_delete_after_ms=parent.auto_delete_after_ms)
            try:
                child = await self.manager.create_from_snapshot(caller, req, parent=machine_id)
            except BaseException:
                await asyncio.shield(self._drop(snapshot.id))
                raise
            row = await self.manager.get_row(caller, child["id"])
            return views.handle(row)

        return await self.manager.once(caller, f"{FORK}:{machine_id}", idempotency_key, machine_id, make)

    # ---- read and delete ----------------------------------------------------------------------------------------

    async def get(self, caller: Caller, snapshot_id: str) -> dict[str, Any]:
        snap = await self.manager.db.read(lambda s: records.get_snapshot(s, caller.namespace_id, snapshot_id,
                                                                         kind="reusable"))
        if snap is None:
            raise NotFoundProblem(f"snapshot {snapshot_id!r} not found", code="snapshot_not_found")
        return views.snapshot_info(snap)

    async def list(self, caller: Caller, *, machine_id: str | None, metadata: dict[str, Any] | None
                   ) -> list[dict[str, Any]]:
        rows = await self.manager.db.read(lambda s: records.list_snapshots(s, caller.namespace_id, kind="reusable",
                                                                           machine_id=machine_id))
        if metadata:
            rows = [r for r in rows if all((r.user_metadata or {}).get(k) == v for k, v in metadata.items())]
        return [views.snapshot_info(r) for r in rows]

    async def delete(self, caller: Caller, snapshot_id: str) -> None:
        def mark(session: Any) -> list[str]:
            snap = records.get_snapshot(session, caller.namespace_id, snapshot_id, kind="reusable")
            if snap is None:
                raise NotFoundProblem(f"snapshot {snapshot_id!r} not found", code="snapshot_not_found")
            users = records.machines_using_snapshot(session, snapshot_id)
            if not users:
                records.mark_snapshot_deleted(session, snapshot_id)
            return users

        users = await self.manager.db.run(mark)
        if users:
            raise ConflictProblem(f"snapshot {snapshot_id} is in use by machine(s) {', '.join(sorted(users))}: "
                                  "destroy them first", code="snapshot_in_use")
        await self.manager.collect_snapshots()

    async def _drop(self, snapshot_id: str) -> None:
        snap = await self.manager.db.read(lambda s: records.snapshot_by_id(s, snapshot_id))
        if snap is not None:
            await self.manager.db.run(lambda s: records.forget_snapshot(s, snapshot_id))
            await asyncio.to_thread(shutil.rmtree, snap.storage_dir, True)


def _written_bytes(artifact: TemplateArtifact) -> int:
    """Bytes the snapshot wrote: its memory image and the overlay it froze (everything else is shared)."""
    return sum(path.stat().st_blocks * 512 for path in (artifact.state, artifact.chain.top.path))
