"""The machine manager: machines of this process from create to destroy, and the durable record of each.

Life of a machine (``status``): ``creating`` → ``running`` ⇄ ``paused`` (hibernate / resume) → ``destroyed``,
or ``error`` (it could not start, or the server died while it ran: ``end_reason`` ``lost``).

Guarantees:
- ``create`` answers once the guest agent has answered (``running``), and is idempotent per
  (namespace, ``Idempotency-Key``): a retry while the first call runs gets ``transition_in_progress``, after it
  the same answer. A failed create leaves no machine behind (no row, no VM, no files).
- A machine restores its template artifact (private overlay, copy-on-write memory) — or, when the requested
  shape differs from the artifact's, a runtime artifact of that shape (``runtime_artifacts``).
- Env values (template runtime env, then create ``envs``) go into the guest agent's memory (``set_env``), never
  into a record or a log; exec ``envs`` override them per command. The start command never sees them.
- Another namespace's machine is ``MachineNotFound`` everywhere.
- A VM never outlives this process (QEMU's parent-death signal); at start, machines a dead process ran are
  marked ``error``/``lost``; at a graceful stop, running machines are hibernated and come back at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from amber.contract.errors import InvalidRef, InvalidRequest
from amber.contract.machines import (
    DEFAULT_TEMPLATE,
    DEFAULT_TIMEOUT_MS,
    CreateMachineRequest,
    EndReason,
    MachineStatus,
    SetTimeoutRequest,
    TimeoutAction,
    check_create,
    internet_of,
    normalize_cwd,
    parse_model,
    timeout_action_of,
)
from amber.contract.template_refs import parse_ref
from amber.host.owners import process_start_time
from amber.machines import views
from amber.machines.admission import Admission, host_memory_mb
from amber.machines.errors import (
    ConflictProblem,
    ExecFailed,
    MachineNotFound,
    MachineProblem,
    NotFoundProblem,
    NotImplementedProblem,
    NotReady,
    TransitionInProgress,
    Unavailable,
)
from amber.machines.live import LiveMachine
from amber.machines.processes import Process, ProcessTable
from amber.machines.runtime_artifacts import RuntimeArtifacts
from amber.machines.templates import TemplateRuntime, load_template_runtime
from amber.machines.tokens import TokenSigner
from amber.settings import Settings
from amber.store import catalog
from amber.store import machines as records
from amber.store.database import Database
from amber.store.errors import NotFound
from amber.store.keys import Caller
from amber.store.models import Artifact, Machine, MachineSnapshot, utcnow
from amber.vm import AgentError, MachineMismatch, MicroVM, VMError, restore, sweep_stale

log = logging.getLogger("amber.machines")
T = TypeVar("T")

CREATE = "create_machine"
TRANSITION_WAIT_SECS = 120.0  # a request waits this long for a hibernate/resume in progress
PROCESSES_FILE = "processes.json"


def _now() -> datetime:
    return datetime.now(UTC)


def new_machine_id() -> str:
    return "mch_" + os.urandom(8).hex()


def new_snapshot_id() -> str:
    return "snap_" + os.urandom(8).hex()


def request_hash(body: dict[str, Any]) -> str:
    """What identifies a create for its idempotency key: the body with env *values* left out."""
    safe = dict(body)
    if isinstance(safe.get("envs"), dict):
        safe["envs"] = sorted(safe["envs"])
    return hashlib.sha256(json.dumps(safe, sort_keys=True, default=str).encode()).hexdigest()


def owner_id() -> str:
    """This serving process: host, pid and start time (a pid reused after a crash is another owner)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_time(pid)}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process ``owner`` names is running — on this host; another host's owner counts as alive."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    if host != socket.gethostname():
        return True
    pid_text, _, start = rest.partition(":")
    try:
        return str(process_start_time(int(pid_text))) == start
    except ValueError:
        return False


class WarmPoolCheckout(Protocol):
    """What create needs of the warm-pool controller (``amber.machines.pools``)."""

    async def checkout(self, caller: Caller, pool_id: str | None, mode: str | None, wait_ms: int | None, *,
                       artifact_id: str, vcpus: int, memory_mb: int, internet: bool
                       ) -> tuple[MicroVM | None, dict[str, Any]]: ...


@dataclass(frozen=True)
class Launch:
    """What a create resolved to."""

    template_ref: str
    template_id: str | None
    artifact_id: str | None
    directory: Path


class MachineManager:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.data_dir = settings.data_dir.resolve()
        self.owner = owner_id()
        self.admission = Admission(
            slots=settings.resolved_restore_slots, queue_limit=settings.machine_queue_limit,
            max_machines=settings.max_machines,
            memory_budget_mb=int(host_memory_mb() * settings.machine_memory_overcommit))
        self.tokens = TokenSigner.for_settings(settings)
        self.runtime_artifacts = RuntimeArtifacts(self.data_dir)
        self._live: dict[str, LiveMachine] = {}
        self.pools: WarmPoolCheckout | None = None  # the warm-pool controller, when the server runs one
        self._creating: dict[str, asyncio.Event] = {}

    # ---- lookups ---------------------------------------------------------------------------------------------

    async def get_row(self, caller: Caller, machine_id: str) -> Machine:
        """The record of ``caller``'s machine (``MachineNotFound`` for anyone else's)."""
        return await self._row(caller, machine_id)

    async def _row(self, caller: Caller, machine_id: str) -> Machine:
        row = await self.db.read(lambda s: records.get_machine(s, caller.namespace_id, machine_id))
        if row is None:
            raise MachineNotFound(f"machine {machine_id!r} not found")
        return row

    async def _by_id(self, machine_id: str) -> Machine | None:
        return await self.db.read(lambda s: records.machine_by_id(s, machine_id))

    def live_machine(self, machine_id: str) -> LiveMachine | None:
        return self._live.get(machine_id)

    async def namespace_of(self, machine_id: str) -> str | None:
        """The namespace owning ``machine_id`` (for requests authorised by a token, not by a key)."""
        live = self._live.get(machine_id)
        if live is not None:
            return live.namespace_id
        row = await self.db.read(lambda s: records.machine_by_id(s, machine_id))
        return row.namespace_id if row is not None else None

    async def live_for(self, caller: Caller, machine_id: str, *, resume: bool = True) -> LiveMachine:
        """The running machine ``machine_id`` of ``caller``, for agent work (marks it active). Waits for a
        transition in progress; a paused machine with ``auto_resume`` is resumed; else ``NotReady``."""
        deadline = time.monotonic() + TRANSITION_WAIT_SECS
        while True:
            live = self._live.get(machine_id)
            if live is not None and live.namespace_id == caller.namespace_id:
                if not live.stopping:
                    live.touch()
                    return live
                await self._wait_transition(live, deadline)
                continue
            row = await self._row(caller, machine_id)
            if row.status == MachineStatus.PAUSED and row.auto_resume and resume:
                await self.resume(caller, machine_id)
                continue
            if row.status == MachineStatus.CREATING and machine_id in self._creating:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._creating[machine_id].wait(), max(0.1, deadline - time.monotonic()))
                continue
            if row.status == MachineStatus.RUNNING and row.owner != self.owner:
                raise Unavailable(f"machine {machine_id} runs on another server ({(row.owner or '?').split(':')[0]})",
                                  code="no_eligible_runtime_host")
            raise NotReady(f"machine {machine_id} is {row.status}" + (
                ": resume it first (POST /v1/machines/{id}/resume or Machine.connect)"
                if row.status == MachineStatus.PAUSED else ""))

    @staticmethod
    async def _wait_transition(live: LiveMachine, deadline: float) -> None:
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                async with live.transition:
                    pass
        except TimeoutError:
            raise TransitionInProgress(f"machine {live.id} is changing state; retry") from None

    # ---- create ----------------------------------------------------------------------------------------------

    async def create(self, caller: Caller, body: Any, idempotency_key: str | None) -> dict[str, Any]:
        req = parse_model(CreateMachineRequest, body, "CreateMachineRequest")
        check_create(req)
        return await self.once(caller, CREATE, idempotency_key, request_hash(body), lambda: self._create(caller, req))

    async def once(self, caller: Caller, operation: str, key: str | None, digest: str,
                   make: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """``make()`` at most once per (namespace, ``operation``, idempotency ``key``): a retry while it runs is
        ``TransitionInProgress``, after it gets the same answer; a different request with the key is refused;
        a failed ``make`` releases the key (a retry starts again). Without a key, just ``make()``."""
        if key is None:
            return await make()
        if not 0 < len(key) <= 255:
            raise InvalidRequest("Idempotency-Key", "must be 1 to 255 characters")
        namespace = caller.namespace_id
        existing = await self.db.run(lambda s: records.claim_idempotency_key(s, namespace, operation, key, digest,
                                                                              self.owner))
        if existing is not None:
            if existing.request_hash != digest:
                raise InvalidRequest("Idempotency-Key", "was already used for a different request")
            if existing.state == "done" and existing.response_json is not None:
                replay: dict[str, Any] = json.loads(existing.response_json)
                if operation == CREATE:  # never stored: recomputed
                    replay["traffic_access_token"] = self.tokens.traffic_token(replay["id"])
                return replay
            if owner_alive(existing.owner):
                raise TransitionInProgress("a request with this Idempotency-Key is still running; retry")
            await self.db.run(lambda s: records.release_idempotency_key(s, namespace, operation, key))
            return await self.once(caller, operation, key, digest, make)
        try:
            out = await make()
        except BaseException:
            await asyncio.shield(self.db.run(lambda s: records.release_idempotency_key(s, namespace, operation,
                                                                                        key)))
            raise
        stored = {k: v for k, v in out.items() if k != "traffic_access_token"}
        await self.db.run(lambda s: records.finish_idempotency_key(s, namespace, operation, key, 201, stored))
        return out

    async def resolve_artifact(self, caller: Caller, ref_text: str) -> Artifact:
        """The template artifact ``ref_text`` names for ``caller`` (builtin fallback for bare names)."""
        launch = await self._resolve_launch(caller, ref_text)
        artifact = await self.db.read(lambda s: s.get(Artifact, launch.artifact_id))
        if artifact is None:
            raise NotFoundProblem(f"template {ref_text!r} not found", code="template_not_found")
        return artifact

    async def _resolve_launch(self, caller: Caller, ref_text: str) -> Launch:
        def resolve(session: Any) -> Launch:
            try:
                ref = parse_ref(ref_text)
            except InvalidRef as exc:
                raise InvalidRequest("template", str(exc)) from None
            found = catalog.resolve_launch(session, caller, ref)
            artifact = catalog.require_artifact(found, ref_text)
            return Launch(ref_text, found.template.id, artifact.id, Path(artifact.storage_dir))

        try:
            return await self.db.read(resolve)
        except NotFound as exc:
            raise NotFoundProblem(exc.message, code="template_not_found") from None

    async def _create(self, caller: Caller, req: CreateMachineRequest) -> dict[str, Any]:
        if req.snapshot_id is not None:
            return await self.create_from_snapshot(caller, req)
        if req.desktop is not None:
            raise NotImplementedProblem("desktop machines are not available on this server")
        if req.volumes:
            raise NotImplementedProblem("volumes are not available on this server")
        if req.network is not None and (req.network.deny_out or req.network.allow_out or (
                req.network.egress is not None and req.network.egress.mode == "custom")):
            raise NotImplementedProblem("custom egress rules are not available on this server "
                                        "(internet_access true or false is)")
        launch = await self._resolve_launch(caller, req.template or DEFAULT_TEMPLATE)
        try:
            runtime = await asyncio.to_thread(load_template_runtime, launch.directory)
        except VMError as exc:
            log.error("template artifact %s cannot be loaded: %s", launch.artifact_id, exc)
            raise Unavailable(f"template {launch.template_ref!r} cannot be started on this server: its artifact is "
                              "missing or damaged", code="no_eligible_runtime_host") from None
        vcpus = req.vcpus or runtime.vcpus
        memory_mb = req.memory_mb or runtime.memory_mb
        self.check_shape(vcpus, memory_mb)
        if req.disk_mb is not None and req.disk_mb > runtime.disk_mb:
            raise InvalidRequest("disk_mb", f"{req.disk_mb} MiB exceeds the template's built-in disk of "
                                            f"{runtime.disk_mb} MiB (rebuild it with build_config.disk_mb ≥ "
                                            f"{req.disk_mb})")
        machine_id = new_machine_id()
        now = _now()
        timeout_ms = req.timeout_ms or DEFAULT_TIMEOUT_MS
        row = Machine(
            id=machine_id, namespace_id=caller.namespace_id, template_ref=launch.template_ref,
            template_id=launch.template_id, artifact_id=launch.artifact_id, status=MachineStatus.CREATING,
            vcpus=vcpus, memory_mb=memory_mb, disk_mb=runtime.disk_mb, internet_access=internet_of(req),
            user_metadata=dict(req.metadata or {}), env_keys=sorted(req.envs or {}), cwd=normalize_cwd(req.cwd),
            default_user=runtime.user, default_workdir=runtime.workdir, timeout_ms=timeout_ms,
            timeout_action=str(timeout_action_of(req)), inactivity_timeout_ms=req.inactivity_timeout_ms,
            auto_delete_after_ms=req.auto_delete_after_ms, ephemeral=req.ephemeral, auto_resume=req.auto_resume,
            storage_dir=str(self.settings.machines_dir / machine_id), owner=self.owner, resume_on_start=False,
            created_at=now,
        )
        self.admission.reserve(machine_id, memory_mb)
        parked: MicroVM | None = None
        if req.warm_pool is not None:
            try:
                parked, row.warm_pool_checkout = await self._checkout(caller, req, launch, row)
            except BaseException:
                self.admission.release(machine_id)
                raise
        created = asyncio.Event()
        self._creating[machine_id] = created
        try:
            await self.db.run(lambda s: records.add_machine(s, row))
            live = await self._start(row, runtime, envs=dict(req.envs or {}), parked=parked)
            await self._running(row, live)
        except BaseException as exc:
            await asyncio.shield(self._discard(machine_id))
            if isinstance(exc, MachineMismatch):
                raise ConflictProblem(f"template {launch.template_ref!r} was built for another QEMU or accelerator; "
                                      "rebuild it", code="rebuild_required") from None
            if isinstance(exc, VMError):
                log.error("machine %s did not start: %s", machine_id, exc)
                raise Unavailable(f"the machine did not start: {str(exc).splitlines()[0]}",
                                  code="no_eligible_runtime_host") from None
            raise
        finally:
            created.set()
            self._creating.pop(machine_id, None)
        log.info("machine %s running (template %s, %d vCPU, %d MiB)", machine_id, launch.template_ref, vcpus,
                 memory_mb)
        return views.created(row, self.tokens.traffic_token(machine_id))

    async def create_from_snapshot(self, caller: Caller, req: CreateMachineRequest,
                                   parent: str | None = None) -> dict[str, Any]:
        """A new machine restored from the reusable (or fork) snapshot ``req.snapshot_id``: its template, shape,
        env, files, processes and cwd are the snapshot's; timeouts and metadata are the request's."""
        snapshot_id = req.snapshot_id or ""
        kinds = ("reusable", "fork") if parent is not None else ("reusable",)
        snap = await self.db.read(lambda s: records.get_snapshot(s, caller.namespace_id, snapshot_id))
        if snap is None or snap.kind not in kinds:
            raise NotFoundProblem(f"snapshot {snapshot_id!r} not found", code="snapshot_not_found")
        if req.envs:
            raise InvalidRequest("envs", "a machine created from a snapshot runs with the snapshot's environment")
        if req.vcpus not in (None, snap.vcpus) or req.memory_mb not in (None, snap.memory_mb):
            raise InvalidRequest("vcpus", f"a machine created from a snapshot has the snapshot's shape "
                                          f"({snap.vcpus} vCPUs, {snap.memory_mb} MiB)")
        machine_id = new_machine_id()
        now = _now()
        timeout_ms = req.timeout_ms or DEFAULT_TIMEOUT_MS
        row = Machine(
            id=machine_id, namespace_id=caller.namespace_id, template_ref=snap.template_ref, template_id=None,
            artifact_id=snap.artifact_id, source_snapshot_id=snap.id, parent_machine_id=parent,
            status=MachineStatus.CREATING, vcpus=snap.vcpus, memory_mb=snap.memory_mb, disk_mb=snap.disk_mb,
            internet_access=snap.internet_access and internet_of(req), user_metadata=dict(req.metadata or {}),
            env_keys=list(snap.env_keys), cwd=normalize_cwd(req.cwd) or snap.cwd, default_user=snap.default_user,
            default_workdir=snap.default_workdir, timeout_ms=timeout_ms, timeout_action=str(timeout_action_of(req)),
            inactivity_timeout_ms=req.inactivity_timeout_ms, auto_delete_after_ms=req.auto_delete_after_ms,
            ephemeral=req.ephemeral, auto_resume=req.auto_resume,
            storage_dir=str(self.settings.machines_dir / machine_id), owner=self.owner, resume_on_start=False,
            created_at=now)
        self.admission.reserve(machine_id, row.memory_mb)
        created = asyncio.Event()
        self._creating[machine_id] = created
        try:
            await self.db.run(lambda s: records.add_machine(s, row))
            live = await self.restore_from(row, Path(snap.storage_dir))
            await self._running(row, live)
        except BaseException:
            await asyncio.shield(self._discard(machine_id))
            raise
        finally:
            created.set()
            self._creating.pop(machine_id, None)
        log.info("machine %s running (from snapshot %s)", machine_id, snap.id)
        return views.created(row, self.tokens.traffic_token(machine_id))

    async def _running(self, row: Machine, live: LiveMachine) -> None:
        """``row``'s VM runs: record it (status, start, deadline) and serve it."""
        started = _now()
        row.status, row.started_at = MachineStatus.RUNNING, started
        row.timeout_at = started + timedelta(milliseconds=row.timeout_ms)
        row.last_active_at = started
        live.timeout_at = row.timeout_at.timestamp()
        self._live[row.id] = live
        await self.db.run(lambda s: records.update_machine(
            s, row.id, status=row.status, started_at=started, timeout_at=row.timeout_at, last_active_at=started))

    def check_shape(self, vcpus: int, memory_mb: int, field: str | None = None) -> None:
        """A shape this host can run (``field`` prefixes the field names in errors)."""
        prefix = f"{field}." if field else ""
        max_vcpus = max(1, (os.cpu_count() or 1) * 8)
        if vcpus > max_vcpus:
            raise InvalidRequest(f"{prefix}vcpus", f"at most {max_vcpus} on this host")
        if memory_mb < 128:
            raise InvalidRequest(f"{prefix}memory_mb", "at least 128 MiB")
        limit = host_memory_mb() // 2
        if memory_mb > limit:
            raise InvalidRequest(f"{prefix}memory_mb", f"at most {limit} MiB on this host (half its memory)")

    async def _checkout(self, caller: Caller, req: CreateMachineRequest, launch: Launch, row: Machine
                        ) -> tuple[MicroVM | None, dict[str, Any]]:
        """A parked VM from the requested warm pool, or None, with the ``warm_pool_checkout`` report."""
        pool = req.warm_pool
        assert pool is not None
        if self.pools is None:
            raise Unavailable("warm pools are not enabled on this server", code="feature_unavailable")
        vm, outcome = await self.pools.checkout(
            caller, pool.id, pool.mode, pool.wait_ms, artifact_id=launch.artifact_id or "", vcpus=row.vcpus,
            memory_mb=row.memory_mb, internet=row.internet_access)
        return vm, {k: v for k, v in outcome.items() if v is not None}

    async def restore_template(self, runtime: TemplateRuntime, vcpus: int, memory_mb: int, *,
                               internet: bool) -> MicroVM:
        """A fresh VM of the template at this shape (its runtime artifact when the shape is not the template's),
        restored in a restore slot, with no env given yet."""
        async with self.admission.restore_slot():
            directory = runtime.artifact.directory
            if (vcpus, memory_mb) != (runtime.vcpus, runtime.memory_mb):
                directory = await self.runtime_artifacts.get(runtime, vcpus, memory_mb, internet=internet)
            return await asyncio.to_thread(restore, directory, data_dir=self.data_dir, internet=internet)

    async def _start(self, row: Machine, runtime: TemplateRuntime, *, envs: dict[str, str],
                     parked: MicroVM | None = None) -> LiveMachine:
        """The VM for ``row`` (``parked`` from a warm pool, else restored now) with the env given to its agent.
        Raises on failure with nothing left running."""
        vm = parked or await self.restore_template(runtime, row.vcpus, row.memory_mb, internet=row.internet_access)
        try:
            env = {**runtime.env, **envs}
            if env:
                await asyncio.to_thread(vm.agent.set_env, env)
        except BaseException:
            await asyncio.to_thread(vm.close)
            raise
        return LiveMachine(id=row.id, namespace_id=row.namespace_id, vm=vm, user=runtime.user,
                           workdir=runtime.workdir, cwd=row.cwd, memory_mb=row.memory_mb,
                           inactivity_timeout_ms=row.inactivity_timeout_ms)

    async def _discard(self, machine_id: str) -> None:
        """Undo a create that failed: VM, row and files gone."""
        live = self._live.pop(machine_id, None)
        if live is not None:
            await asyncio.to_thread(live.vm.close)
        self.admission.release(machine_id)
        await self.db.run(lambda s: s.query(Machine).filter(Machine.id == machine_id).delete())
        await asyncio.to_thread(shutil.rmtree, self.settings.machines_dir / machine_id, True)

    # ---- read ------------------------------------------------------------------------------------------------

    async def get(self, caller: Caller, machine_id: str) -> dict[str, Any]:
        row = await self._row(caller, machine_id)
        return self._info(row)

    def _info(self, row: Machine) -> dict[str, Any]:
        live = self._live.get(row.id)
        last = datetime.fromtimestamp(live.last_active, UTC) if live is not None else None
        return views.machine_info(row, last_active_at=last)

    async def list_machines(self, caller: Caller, *, statuses: list[str] | None, template: str | None,
                   metadata: dict[str, Any] | None, limit: int, next_token: str | None) -> dict[str, Any]:
        rows = await self.db.read(lambda s: records.list_machines(
            s, caller.namespace_id, statuses=statuses, template=template, metadata=metadata, limit=limit,
            after=next_token))
        more = len(rows) > limit
        rows = rows[:limit]
        out: dict[str, Any] = {"items": [self._info(r) for r in rows], "has_next": more}
        if more and rows:
            out["next_token"] = rows[-1].id
        return out

    # ---- destroy ---------------------------------------------------------------------------------------------

    async def destroy(self, caller: Caller, machine_id: str) -> dict[str, Any]:
        row = await self._row(caller, machine_id)
        if row.status == MachineStatus.DESTROYED:
            return {"id": machine_id, "status": "destroyed"}
        await self._end(machine_id, EndReason.KILLED)
        return {"id": machine_id, "status": "destroyed"}

    async def _end(self, machine_id: str, reason: EndReason, error: str | None = None) -> None:
        """Destroy: the VM stops, its files go, the row becomes a tombstone."""
        live = self._live.get(machine_id)
        if live is not None:
            async with live.transition:
                live.stopping = True
                self._live.pop(machine_id, None)
                await asyncio.to_thread(live.vm.close)
                for process in live.processes.running():
                    process.finish(-1)
        self.admission.release(machine_id)
        pause = await self.db.run(lambda s: self._tombstone(s, machine_id, reason, error))
        await asyncio.to_thread(shutil.rmtree, self.settings.machines_dir / machine_id, True)
        await self.collect_snapshots()
        if pause:
            log.info("machine %s destroyed (%s); its hibernation snapshot removed", machine_id, reason)
        else:
            log.info("machine %s destroyed (%s)", machine_id, reason)

    @staticmethod
    def _tombstone(session: Any, machine_id: str, reason: EndReason, error: str | None) -> bool:
        row = records.machine_by_id(session, machine_id)
        if row is None:
            return False
        pause = row.pause_snapshot_id
        records.update_machine(session, machine_id, status=MachineStatus.DESTROYED, end_reason=str(reason),
                               error=error, ended_at=utcnow(), pause_snapshot_id=None, timeout_at=None)
        if pause:
            records.forget_snapshot(session, pause)
        return pause is not None

    async def collect_snapshots(self) -> None:
        """Remove the storage of deleted snapshots and of fork snapshots whose child is gone, once no machine
        restored from them remains (their layers live on in whatever else links them)."""

        def due(session: Any) -> list[MachineSnapshot]:
            gone = [snap for snap in records.snapshots_to_collect(session)
                    if not records.machines_using_snapshot(session, snap.id)]
            for snap in gone:
                records.forget_snapshot(session, snap.id)
            return gone

        for snap in await self.db.run(due):
            await asyncio.to_thread(shutil.rmtree, snap.storage_dir, True)

    # ---- time ------------------------------------------------------------------------------------------------

    async def set_timeout(self, caller: Caller, machine_id: str, body: Any) -> dict[str, Any]:
        req = parse_model(SetTimeoutRequest, body, "SetTimeoutRequest")
        if not 0 < req.timeout_ms <= 7 * 24 * 3600 * 1000:
            raise InvalidRequest("timeout_ms", "must be between 1 and 604800000 ms")
        row = await self._row(caller, machine_id)
        if row.status in (MachineStatus.DESTROYED, MachineStatus.ERROR):
            raise NotReady(f"machine {machine_id} is {row.status}")
        action = str(req.timeout_action) if req.timeout_action is not None else row.timeout_action
        if row.ephemeral and action == TimeoutAction.HIBERNATE:
            raise InvalidRequest("timeout_action", "an ephemeral machine is never hibernated")
        deadline = _now() + timedelta(milliseconds=req.timeout_ms)
        timeout_at = deadline if row.status == MachineStatus.RUNNING else None
        await self.db.run(lambda s: records.update_machine(s, machine_id, timeout_ms=req.timeout_ms,
                                                            timeout_action=action, timeout_at=timeout_at))
        live = self._live.get(machine_id)
        if live is not None:
            live.timeout_at = deadline.timestamp()
            live.touch()
        row.timeout_ms, row.timeout_action, row.timeout_at = req.timeout_ms, action, timeout_at
        return views.timeout_lease(row)

    async def expire(self, machine_id: str, why: str) -> None:
        """The reaper's verdict: apply the machine's timeout action."""
        row = await self.db.read(lambda s: records.machine_by_id(s, machine_id))
        if row is None or row.status != MachineStatus.RUNNING:
            return
        if row.timeout_action == TimeoutAction.HIBERNATE and not row.ephemeral:
            log.info("machine %s: %s; hibernating", machine_id, why)
            try:
                await self._hibernate(row)
                return
            except MachineProblem as exc:
                log.warning("machine %s: hibernation at timeout failed (%s); destroying it", machine_id, exc.message)
        else:
            log.info("machine %s: %s; destroying", machine_id, why)
        await self._end(machine_id, EndReason.TIMEOUT)

    async def auto_delete(self, machine_id: str) -> None:
        await self._end(machine_id, EndReason.AUTO_DELETE)

    def live_machines(self) -> list[LiveMachine]:
        return list(self._live.values())

    # ---- hibernate / resume ----------------------------------------------------------------------------------

    async def hibernate(self, caller: Caller, machine_id: str) -> dict[str, Any]:
        row = await self._row(caller, machine_id)
        if row.status == MachineStatus.PAUSED and row.pause_snapshot_id:
            snap = await self.db.read(lambda s: records.snapshot_by_id(s, row.pause_snapshot_id or ""))
            if snap is not None:
                return views.snapshot_info(snap)
        if row.status != MachineStatus.RUNNING:
            raise NotReady(f"machine {machine_id} is {row.status}")
        if row.ephemeral:
            raise ConflictProblem(f"machine {machine_id} is ephemeral: it is never hibernated (destroy it instead)")
        snapshot = await self._hibernate(row)
        return views.snapshot_info(snapshot)

    async def _hibernate(self, row: Machine, *, resume_on_start: bool = False) -> MachineSnapshot:
        machine_id = row.id
        live = self._live.get(machine_id)
        if live is None:
            raise Unavailable(f"machine {machine_id} runs on another server", code="no_eligible_runtime_host")
        async with live.transition:
            if self._live.get(machine_id) is not live:
                raise NotReady(f"machine {machine_id} is no longer running")
            live.stopping = True
            storage = Path(row.storage_dir)
            target = storage / f"hibernate-{os.urandom(4).hex()}"
            previous = sorted(storage.glob("hibernate-*")) if storage.is_dir() else []
            state: dict[str, Any] = {}
            try:
                await asyncio.to_thread(storage.mkdir, parents=True, exist_ok=True)
                artifact = await asyncio.to_thread(live.vm.snapshot, target, None,
                                                   lambda: state.update(live.process_state()))
            except BaseException as exc:
                live.stopping = False
                if not live.vm.alive():  # the VM is gone with the failed snapshot: the machine is lost
                    self._live.pop(machine_id, None)
                    self.admission.release(machine_id)
                    await asyncio.shield(self.db.run(lambda s: self._tombstone(
                        s, machine_id, EndReason.FAILED, "hibernation failed")))
                if isinstance(exc, VMError):
                    raise ConflictProblem(f"hibernation of {machine_id} failed: {str(exc).splitlines()[0]}") from None
                raise
            self._live.pop(machine_id, None)
            self.admission.release(machine_id)
            await asyncio.to_thread((target / PROCESSES_FILE).write_text, json.dumps(state))
            for old in previous:  # its layers are hard-linked into the new one
                await asyncio.to_thread(shutil.rmtree, old, True)
            size = artifact.size_bytes()["allocated"]
            snapshot = MachineSnapshot(
                id=new_snapshot_id(), namespace_id=row.namespace_id, machine_id=machine_id, kind="pause",
                storage_dir=str(target), size_bytes=size, user_metadata=dict(row.user_metadata or {}),
                template_ref=row.template_ref, artifact_id=row.artifact_id, vcpus=row.vcpus,
                memory_mb=row.memory_mb, disk_mb=row.disk_mb, internet_access=row.internet_access, cwd=row.cwd,
                default_user=row.default_user, default_workdir=row.default_workdir, env_keys=list(row.env_keys),
                created_at=_now())

            def record(session: Any) -> None:
                old = records.machine_by_id(session, machine_id)
                if old is not None and old.pause_snapshot_id:
                    records.forget_snapshot(session, old.pause_snapshot_id)
                records.add_snapshot(session, snapshot)
                records.update_machine(session, machine_id, status=MachineStatus.PAUSED, pause_snapshot_id=snapshot.id,
                                       paused_at=snapshot.created_at, timeout_at=None, resume_on_start=resume_on_start,
                                       last_active_at=datetime.fromtimestamp(live.last_active, UTC))

            await self.db.run(record)
        log.info("machine %s hibernated (%d MB)", machine_id, size >> 20)
        return snapshot

    async def resume(self, caller: Caller, machine_id: str) -> dict[str, Any]:
        row = await self._row(caller, machine_id)
        if row.status == MachineStatus.RUNNING:
            return views.handle(row)
        if row.status == MachineStatus.CREATING:
            raise TransitionInProgress(f"machine {machine_id} is still starting")
        if row.status != MachineStatus.PAUSED:
            raise NotReady(f"machine {machine_id} is {row.status} and cannot be resumed")
        row = await self._resume(row)
        return views.handle(row)

    async def _resume(self, row: Machine) -> Machine:
        machine_id = row.id
        event = self._creating.get(machine_id)
        if event is not None:  # another request is resuming it: wait for that one
            await event.wait()
            fresh = await self.db.read(lambda s: records.machine_by_id(s, machine_id))
            assert fresh is not None
            return fresh
        event = asyncio.Event()
        self._creating[machine_id] = event
        try:
            snap = await self.db.read(lambda s: records.snapshot_by_id(s, row.pause_snapshot_id or ""))
            if snap is None:
                raise ConflictProblem(f"machine {machine_id} has no hibernation snapshot", code="incompatible_snapshot")
            self.admission.reserve(machine_id, row.memory_mb)
            try:
                live = await self.restore_from(row, Path(snap.storage_dir))
            except BaseException:
                self.admission.release(machine_id)
                raise
            now = _now()
            timeout_at = now + timedelta(milliseconds=row.timeout_ms)
            live.timeout_at = timeout_at.timestamp()
            self._live[machine_id] = live

            def record(session: Any) -> None:
                records.update_machine(session, machine_id, status=MachineStatus.RUNNING, pause_snapshot_id=None,
                                       timeout_at=timeout_at, last_active_at=now, owner=self.owner,
                                       resume_on_start=False, paused_at=None)
                records.forget_snapshot(session, snap.id)

            await self.db.run(record)
            row.status, row.pause_snapshot_id, row.timeout_at, row.owner = MachineStatus.RUNNING, None, timeout_at, \
                self.owner
            log.info("machine %s resumed", machine_id)
            return row
        finally:
            event.set()
            self._creating.pop(machine_id, None)

    async def restore_from(self, row: Machine, directory: Path) -> LiveMachine:
        """A VM for ``row`` restored from a machine snapshot directory (hibernation, reusable snapshot, fork), in a
        restore slot, its background processes re-attached to their records (``processes.json``). The caller
        has reserved admission; on failure nothing is left running (``incompatible_snapshot``)."""
        try:
            state = json.loads(await asyncio.to_thread((directory / PROCESSES_FILE).read_text))
        except (OSError, ValueError):
            state = {"next_request_id": None, "processes": []}
        table = ProcessTable.from_json(state.get("processes", []))
        running = table.running()
        try:
            async with self.admission.restore_slot():
                vm = await asyncio.to_thread(
                    restore, directory, data_dir=self.data_dir, internet=row.internet_access,
                    first_request_id=state.get("next_request_id"), attach=[p.request_id for p in running])
        except MachineMismatch:
            raise ConflictProblem(f"the snapshot of machine {row.id} was taken on another QEMU or accelerator",
                                  code="incompatible_snapshot") from None
        except VMError as exc:
            raise ConflictProblem(f"machine {row.id} could not be restored: {str(exc).splitlines()[0]}",
                                  code="incompatible_snapshot") from None
        live = LiveMachine(id=row.id, namespace_id=row.namespace_id, vm=vm, user=row.default_user,
                           workdir=row.default_workdir, cwd=row.cwd, memory_mb=row.memory_mb,
                           inactivity_timeout_ms=row.inactivity_timeout_ms, processes=table)
        for process in running:
            await self._reattach(live, process)
        return live

    async def _reattach(self, live: LiveMachine, process: Process) -> None:
        """Route a background command that ran when the machine was hibernated to its process record again."""
        callbacks = live.job_callbacks(process)
        job = live.agent.attach(process.request_id, on_stdout=callbacks.on_stdout, on_stderr=callbacks.on_stderr,
                                on_exit=callbacks.on_exit)
        process.job = job
        try:
            await asyncio.to_thread(job.wait_started, 10.0)
        except (AgentError, VMError):
            process.finish(-1)  # it ended while the machine slept; its exit status was not seen

    # ---- process start and stop ------------------------------------------------------------------------------

    async def recover(self) -> None:
        """At start: machines a dead server ran are lost (their VMs died with it); machines hibernated by a
        graceful stop come back."""
        await asyncio.to_thread(sweep_stale, self.data_dir)

        def lost(session: Any) -> tuple[list[str], list[str]]:
            ended, dead = [], set()
            for row in records.machines_with_status(session, [MachineStatus.CREATING, MachineStatus.RUNNING]):
                if row.owner == self.owner or owner_alive(row.owner):
                    continue
                dead.add(row.owner or "")
                if row.status == MachineStatus.CREATING:
                    session.delete(row)
                    continue
                records.update_machine(session, row.id, status=MachineStatus.ERROR, end_reason=str(EndReason.LOST),
                                       error="the server running this machine stopped unexpectedly",
                                       ended_at=utcnow(), timeout_at=None)
                ended.append(row.id)
            records.release_pending_keys_of(session, dead)
            wake = [r.id for r in records.machines_with_status(session, [MachineStatus.PAUSED]) if r.resume_on_start]
            return ended, wake

        ended, wake = await self.db.run(lost)
        for machine_id in ended:
            await asyncio.to_thread(shutil.rmtree, self.settings.machines_dir / machine_id, True)
        if ended:
            log.warning("%d machine(s) were lost with the previous server: %s", len(ended), ", ".join(ended))
        for machine_id in wake:
            row = await self._by_id(machine_id)
            if row is None or row.status != MachineStatus.PAUSED:
                continue
            try:
                await self._resume(row)
            except MachineProblem as exc:
                log.warning("machine %s stays paused: %s", machine_id, exc.message)

    async def shutdown(self) -> None:
        """Graceful stop: hibernate every running machine (a few at once) so it resumes after the restart;
        what cannot be hibernated in time is destroyed."""
        rows = []
        for machine_id in list(self._live):
            row = await self._by_id(machine_id)
            if row is not None:
                rows.append(row)
        if not rows:
            return
        log.info("hibernating %d running machine(s) before stopping", len(rows))
        slots = asyncio.Semaphore(self.settings.resolved_restore_slots)

        async def one(row: Machine) -> None:
            async with slots:
                if row.ephemeral:
                    await self._end(row.id, EndReason.KILLED, "the server stopped")
                    return
                try:
                    await self._hibernate(row, resume_on_start=True)
                except MachineProblem as exc:
                    log.warning("machine %s could not be hibernated: %s", row.id, exc.message)
                    await self._end(row.id, EndReason.LOST, "the server stopped and could not hibernate it")

        try:
            async with asyncio.timeout(self.settings.machine_stop_timeout_secs):
                await asyncio.gather(*(one(r) for r in rows))
        except TimeoutError:
            for machine_id in list(self._live):
                await self._end(machine_id, EndReason.LOST, "the server stopped before it could hibernate it")


async def run_blocking(fn: Callable[[], T]) -> T:
    """Agent work from the event loop, as ``ExecFailed`` when the VM does not answer."""
    try:
        return await asyncio.to_thread(fn)
    except AgentError:
        raise
    except VMError as exc:
        raise ExecFailed(f"the machine's agent did not answer: {str(exc).splitlines()[0]}") from None
