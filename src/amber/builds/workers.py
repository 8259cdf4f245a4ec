"""In-process build workers: claim queued builds, run the pipeline, persist its events, enforce timeouts.

Each worker is an asyncio task in the server's event loop; the pipeline does its blocking work in threads
or subprocesses. Claims are fair between namespaces (``amber.store.builds.claim_next``: round robin, at most
``Settings.resolved_namespace_max_builds`` running per namespace) and bounded by memory: the build VMs of this
process together ask for at most ``memory_overcommit_ratio`` times the host's memory. While a build runs its
worker renews the lease every ``lease_secs / 3`` and checks for a cancel requested through any host. Timeouts:
the whole attempt (``build_timeout_secs``) and any single log phase (``phase_timeout_secs``); on expiry the
pipeline is cancelled and the build fails with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amber.builds.executor import BuildExecutor, BuildInputs, BuildJob
from amber.builds.pipeline.prune import prune
from amber.builds.service import BuildService
from amber.builds.service.accept import stored_plan
from amber.contract.errors import InvalidRequest
from amber.contract.failures import LOG_PHASE_FAILURES, BuildFailed, FailurePhase, failure_reason
from amber.contract.logs import LogEvent, LogPhase
from amber.contract.request import DEFAULT_MEMORY_MIB
from amber.settings import host_memory_mib
from amber.store import catalog
from amber.store.blobs import resolve_for_build
from amber.store.builds import build_memory_mib, claim_next, renew_lease
from amber.store.models import Build

log = logging.getLogger("amber.workers")

_CANCEL_GRACE_SECS = 30.0  # how long the pipeline gets to clean up after cancel before its task is cancelled


def load_executor(settings: Any) -> BuildExecutor | None:
    """The native/BuildKit pipeline, or None when this checkout has none (every build then fails clearly)."""
    try:
        module = importlib.import_module("amber.builds.pipeline")
    except ImportError:
        module = None
    factory = getattr(module, "create_executor", None)
    if factory is None:
        log.error("amber.builds.pipeline.create_executor is not available; builds will fail")
        return None
    executor: BuildExecutor = factory(settings)
    return executor


def build_only_hider(inputs: BuildInputs | None) -> Callable[[str], str]:
    """Replaces every ``build_envs`` value (3 characters or more) in a log or failure text by ``***``: the
    values are build-only (R56) and never stored, so neither may the lines that show them be."""
    values = sorted({v for v in (inputs.build_envs.values() if inputs else ()) if len(v) >= 3}, key=len,
                    reverse=True)  # fmt: skip

    def hide(text: str) -> str:
        for value in values:
            if value in text:
                text = text.replace(value, "***")
        return text

    return hide


class _Progress:
    """Tracks the current log phase for timeouts and for mapping an unexpected crash to a failure phase."""

    def __init__(self) -> None:
        self.phase: LogPhase | None = None
        self.phase_started = time.monotonic()
        self.step_index: int | None = None

    def see(self, event: LogEvent) -> None:
        if event.phase is not None and event.phase != self.phase:
            self.phase = event.phase
            self.phase_started = time.monotonic()
        if event.step_index is not None:
            self.step_index = event.step_index

    @property
    def failure_phase(self) -> FailurePhase:
        return LOG_PHASE_FAILURES.get(self.phase, FailurePhase.PREPARE) if self.phase else FailurePhase.PREPARE


class WorkerPool:
    def __init__(self, service: BuildService, count: int, executor: BuildExecutor | None) -> None:
        self.service = service
        self.count = count
        self.executor = executor
        self._tasks: list[asyncio.Task[None]] = []
        self._reaper_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.memory_in_use_mib = 0  # build VMs of this process (claimed builds' memory_mib)

    def start(self) -> None:
        for index in range(self.count):
            self._tasks.append(asyncio.create_task(self._loop(), name=f"amber-worker-{index}"))
        self._reaper_task = asyncio.create_task(self._reaper(), name="amber-reaper")

    async def stop(self, grace_secs: float = 20.0) -> None:
        """Cancel running builds, give their pipelines ``grace_secs`` to stop VMs and record the builds as
        ``interrupted``, then stop the workers."""
        self._stopping = True
        for event in self.service.cancel_events.values():
            event.set()
        self.service.work_available.set()  # wake idle workers so they see _stopping
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace_secs)
        tasks = [*self._tasks, *([self._reaper_task] if self._reaper_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _loop(self) -> None:
        service = self.service
        settings = service.settings
        owner = str(service.identity)
        postgres = not service.db.is_sqlite
        namespace_limit = settings.resolved_namespace_max_builds
        memory_total = int(host_memory_mib() * settings.memory_overcommit_ratio)
        while not self._stopping:
            # With nothing running here any one build fits (admission already bounded it by the host's memory).
            budget = memory_total - self.memory_in_use_mib if self.memory_in_use_mib else None
            build = await service.db.run(functools.partial(
                claim_next, owner=owner, lease_secs=settings.lease_secs, postgres=postgres,
                namespace_limit=namespace_limit, memory_budget_mib=budget, default_memory_mib=DEFAULT_MEMORY_MIB))
            if build is None:
                if self._stopping:
                    return
                service.work_available.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(service.work_available.wait(), timeout=1.0 if postgres else 5.0)
                continue
            memory = build_memory_mib(build.build_config, DEFAULT_MEMORY_MIB)
            self.memory_in_use_mib += memory
            try:
                await self._run(build)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in the service itself: end the build instead of leaving it running
                log.exception("worker crashed on build %s", build.id)
                await service.fail(build.id, code="internal_error", message=f"internal error: {exc}",
                                   phase=FailurePhase.FINALIZE.value, reason="internal_error")
            finally:
                self.memory_in_use_mib -= memory
                service.memory.pop(build.id, None)
                service.cancel_events.pop(build.id, None)
                service.work_available.set()  # a namespace or memory slot is free: idle workers look again

    async def _reaper(self) -> None:
        """Periodically end builds whose worker (on any host) lost its lease."""
        while True:
            await asyncio.sleep(self.service.settings.lease_secs)
            with contextlib.suppress(Exception):
                await self.service.recover()

    async def _run(self, build: Build) -> None:
        service = self.service
        settings = service.settings
        inputs = service.memory.get(build.id)
        if build.pinned_worker is not None and inputs is None:
            await service.fail(build.id, code="build_error", phase=FailurePhase.INTERRUPTED.value,
                               reason="inputs_lost",
                               message="build interrupted: its secrets, credentials or inline context were lost")
            return
        try:
            plan = await service.db.run(lambda s: stored_plan(s, build))
        except InvalidRequest as exc:
            await service.fail(build.id, code="build_error", phase=FailurePhase.PREPARE.value,
                               reason=failure_reason(FailurePhase.PREPARE), message=f"invalid build definition: {exc}")
            return
        if inputs is not None:
            plan = plan.with_build_envs(inputs.build_envs)  # build-only values: never stored, kept in memory
        job = BuildJob(build_id=build.id, template_id=build.artifact_id, plan=plan,
                       data_dir=Path(settings.data_dir), inputs=inputs or BuildInputs())  # fmt: skip
        entries = plan.blob_entries
        if entries:
            try:
                paths = await service.db.run(
                    lambda s: resolve_for_build(s, service.blobs, build.namespace_id, entries))
            except Exception as exc:
                await service.fail(build.id, code="file_upload_error", phase="blob_upload",
                                   reason="missing_parts", message=str(exc))
                return
            job.blob_paths = {k: Path(v) for k, v in paths.items()}
        if plan.base_template is not None:
            base_id = plan.base_template.artifact_id
            base_dir = await service.db.run(lambda s: catalog.artifact_dir(s, base_id))
            if base_dir is None:
                await service.fail(build.id, code="build_error", phase=FailurePhase.PREPARE.value,
                                   reason="base_template_deleted",
                                   message=f"the base template artifact {base_id} was deleted "
                                           "after this build was accepted")
                return
            job.base_template_artifact = Path(base_dir)
        if self.executor is None:
            await service.fail(build.id, code="internal_error", phase=FailurePhase.PREPARE.value,
                               reason="pipeline_unavailable",
                               message="this server has no build pipeline installed (amber.builds.pipeline)")
            return

        cancel = asyncio.Event()
        service.cancel_events[build.id] = cancel
        progress = _Progress()
        attempt = build.attempt
        stopped = False

        hide = build_only_hider(inputs)

        async def emit(event: LogEvent) -> None:
            nonlocal stopped
            progress.see(event)
            if stopped:
                return
            if hide(event.message) != event.message:
                event = dataclasses.replace(event, message=hide(event.message))
            if not await service.emit(build.id, event, attempt=attempt):
                stopped = True
                cancel.set()

        started = time.monotonic()
        task = asyncio.create_task(self.executor.run(job, emit, cancel))
        timeout_message: str | None = None
        timed_out: tuple[FailurePhase, int | None] = (FailurePhase.PREPARE, None)
        last_renew = time.monotonic()
        cancel_seen: float | None = None
        owner = str(service.identity)
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            if task.done():
                break
            now = time.monotonic()
            if timeout_message is None and not cancel.is_set():
                if now - started > settings.build_timeout_secs:
                    timeout_message = f"build timed out after {settings.build_timeout_secs:.0f} s"
                elif now - progress.phase_started > settings.phase_timeout_secs:
                    phase = progress.phase.value if progress.phase else "preparing"
                    timeout_message = f"phase {phase} timed out after {settings.phase_timeout_secs:.0f} s"
                if timeout_message:
                    timed_out = (progress.failure_phase, progress.step_index)  # before cleanup events arrive
                    cancel.set()
            if now - last_renew > settings.lease_secs / 3:
                last_renew = now
                status, cancel_at = await service.db.run(
                    lambda s: renew_lease(s, build.id, owner, settings.lease_secs))
                if status != "building" or cancel_at is not None:
                    cancel.set()
            if cancel.is_set():
                cancel_seen = cancel_seen if cancel_seen is not None else now
                if now - cancel_seen > _CANCEL_GRACE_SECS:
                    task.cancel()  # the pipeline ignored cancel: stop waiting for it
        await self._finish(build, task, progress, timeout_message, timed_out, cancel, hide)
        await self._prune_caches()

    async def _prune_caches(self) -> None:
        """Keep ``<data_dir>/cache`` under its size limit after every build (a scan when under the limit)."""
        settings = self.service.settings
        limit = settings.resolved_cache_max_bytes
        try:
            await asyncio.to_thread(prune, settings.data_dir.resolve(), max_bytes=limit,
                                    min_idle_secs=settings.cache_min_idle_secs)  # fmt: skip
        except Exception:
            log.exception("cache eviction failed")

    async def _finish(
        self,
        build: Build,
        task: asyncio.Task[Any],
        progress: _Progress,
        timeout_message: str | None,
        timed_out: tuple[FailurePhase, int | None],
        cancel: asyncio.Event,
        hide: Callable[[str], str],
    ) -> None:
        service = self.service
        error: BaseException | None = None
        artifact = None
        if task.cancelled():
            error = asyncio.CancelledError()
        else:
            error = task.exception()
            if error is None:
                artifact = task.result()
        if artifact is not None and not cancel.is_set():
            await service.succeed(build.id, artifact)
            return
        if artifact is not None:
            await asyncio.to_thread(service.artifact_dirs_removed, [str(artifact.artifact_dir)])
        if timeout_message is not None:
            await service.fail(build.id, code="build_error", message=timeout_message,
                               phase=timed_out[0].value, reason="timeout", step_index=timed_out[1])
        elif isinstance(error, BuildFailed):
            details = {k: hide(v) if isinstance(v, str) else v for k, v in (error.details or {}).items()}
            await service.fail(build.id, code=error.code, message=hide(error.message), phase=error.phase.value,
                               reason=failure_reason(error.phase), step_index=error.step_index, extra=details)
        elif isinstance(error, asyncio.CancelledError) or cancel.is_set():
            # Cancelled through the API (already terminal) or by shutdown: shutdown ends it as interrupted.
            await service.fail(build.id, code="build_error", phase=FailurePhase.INTERRUPTED.value,
                               reason="server_shutdown",
                               message="build interrupted: the server shut down while it was running")
        elif error is not None:
            log.error("pipeline crashed on build %s", build.id, exc_info=error)
            await service.fail(build.id, code="internal_error", message=f"internal error in the build pipeline: "
                               f"{type(error).__name__}: {error}", phase=progress.failure_phase.value,
                               reason="internal_error", step_index=progress.step_index)

