"""The native build pipeline: base disk → step layers → build VM → start → ready → snapshot, over a stored plan.

One ``NativeExecutor.run`` per build attempt executes the job's ``BuildPlan`` through the phases of
``amber.builds.pipeline.phases`` — ``base``, ``steps``, ``finalize`` (around ``start`` and ``snapshot``) — each
cached step through the one ``CachedRunner``. Log phases, in order: ``cache`` (every lookup with
hit/miss/bypass and reason), ``preparing`` (resolve, import), ``vm_create``, ``step`` (with
``step_index``/``total_steps``), ``sync``, ``startup``, ``readiness``, ``snapshot``, ``finalize``, ``cleanup``.

Guarantees:
- the base disk is cached by image *manifest digest* (a Dockerfile's by the image ID BuildKit built); each step's
  disk layer by its chain key; the finished artifact by a key over the last layer, start command, readiness and
  runtime defaults — a fully cached rebuild boots nothing and only links the cached artifact into a new
  artifact directory;
- on failure or cancellation the VM is stopped, the build's work directory and artifact directory removed,
  and every held cache entry released; nothing half-written is ever visible in the cache;
- secrets and credentials are never logged, hashed into keys, or written to disk by the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from amber.builds.executor import BuildArtifact, BuildJob
from amber.builds.pipeline.attempt import Attempt, Chain
from amber.builds.pipeline.context import BuildContextFiles, ContextError
from amber.builds.pipeline.events import BuildLog
from amber.builds.pipeline.phases.base import prepare_base
from amber.builds.pipeline.phases.finalize import finalize
from amber.builds.pipeline.phases.steps import BOOT_WAIT_SECS, run_steps
from amber.builds.pipeline.runner import CachedRunner
from amber.builds.pipeline.store import CacheStore, EntryHold
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import Emit, LogPhase
from amber.vm import Driver


class NativeExecutor:
    """Runs native builds on ``vm`` (see ``amber.builds.pipeline.create_executor`` for the real backend).

    Cache entries live under ``<data_dir>/cache/build``; image layers in ``amber.oci``'s shared cache
    ``<data_dir>/cache/layers``; artifacts in ``<data_dir>/artifacts/<build_id>``; per-build work files in
    ``<data_dir>/builds/<build_id>`` (removed when the attempt ends).
    """

    def __init__(self, *, data_dir: Path, vm: Driver, git_local_roots: Sequence[Path] = ()) -> None:
        self.data_dir = data_dir
        self.git_local_roots = tuple(git_local_roots)  # AMBER_GIT_LOCAL_ROOTS: where git_clone may read paths
        self.cache = CacheStore(data_dir / "cache" / "build")
        self.layer_cache = data_dir / "cache" / "layers"
        self.vm = vm

    async def run(self, job: BuildJob, emit: Emit, cancel: asyncio.Event) -> BuildArtifact:
        log = BuildLog(emit, len(job.plan.steps))
        data_dir = job.data_dir.resolve()  # the artifact path is stored: never relative to a working directory
        holds: list[EntryHold] = []
        attempt = Attempt(
            job=job, log=log, cache=CachedRunner(self.cache, log, holds), vm=self.vm, cancel=cancel,
            data_dir=self.data_dir, layer_cache=self.layer_cache, git_local_roots=self.git_local_roots,
            work_dir=data_dir / "builds" / job.build_id, artifact_dir=data_dir / "artifacts" / job.build_id,
            holds=holds,
        )  # fmt: skip
        work = asyncio.ensure_future(self._build(attempt))
        stop = asyncio.ensure_future(cancel.wait())
        try:
            finished, _ = await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
            if work in finished:
                return work.result()
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, BuildFailed, Exception):
                await work
            raise asyncio.CancelledError
        finally:
            stop.cancel()
            if not work.done():  # run() itself was cancelled: stop the build before cleaning up after it
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
            await _cleanup(attempt)

    async def _build(self, attempt: Attempt) -> BuildArtifact:
        shutil.rmtree(attempt.artifact_dir, ignore_errors=True)
        shutil.rmtree(attempt.work_dir, ignore_errors=True)
        attempt.work_dir.mkdir(parents=True)
        try:
            attempt.fingerprint = await asyncio.to_thread(self.vm.fingerprint)
        except Exception as exc:
            raise BuildFailed(f"the build VM cannot start on this server: {exc}", phase=FailurePhase.PREPARE) from None
        job = attempt.job
        try:
            context = BuildContextFiles(job.plan.context_files(job.inputs.inline_files), job.blob_paths)
        except ContextError as exc:
            raise BuildFailed(str(exc), phase=FailurePhase.PREPARE) from None
        base = await prepare_base(attempt)
        chain = Chain.over(job.plan, base, attempt.fingerprint)
        top = await run_steps(attempt, chain, context)
        return await finalize(attempt, chain, top)


async def _cleanup(attempt: Attempt) -> None:
    booting = attempt.booting
    if booting is not None and attempt.machine is None:
        await asyncio.wait({booting}, timeout=BOOT_WAIT_SECS)  # a boot in flight: let it finish, then stop it
        if booting.done() and not booting.cancelled() and booting.exception() is None:
            attempt.machine = booting.result()
    machine, attempt.machine = attempt.machine, None
    if machine is not None:
        await asyncio.to_thread(machine.close)
    for pump in attempt.pumps:
        with contextlib.suppress(Exception):
            await pump.close()
    for hold in attempt.holds:
        hold.release()
    await asyncio.to_thread(shutil.rmtree, attempt.work_dir, True)
    if not attempt.done:
        await asyncio.to_thread(shutil.rmtree, attempt.artifact_dir, True)
    with contextlib.suppress(Exception):
        await attempt.log.debug(LogPhase.CLEANUP, "build VM stopped and work files removed")
