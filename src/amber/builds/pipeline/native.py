"""The native build pipeline: base image → cached disk chain → build VM → steps → start → ready → snapshot.

One ``NativeExecutor.run`` per build attempt. Phases, in order, each reported as log entries: ``cache`` (every
lookup with hit/miss/bypass and reason), ``preparing`` (resolve, import), ``vm_create``, ``step`` (with
``step_index``/``total_steps``), ``sync``, ``startup``, ``readiness``, ``snapshot``, ``finalize``, ``cleanup``.

Guarantees:
- the base disk is cached by image *manifest digest* (a Dockerfile's by the image ID BuildKit built,
  ``pipeline/dockerfile.py``); each step's disk layer by its chain key; the finished
  artifact by a key over the last layer, start command, readiness and runtime defaults — a fully cached
  rebuild boots nothing and only links the cached artifact into a new artifact directory;
- on failure or cancellation the VM is stopped, the build's work directory and artifact directory removed,
  and unpublished cache entries dropped; nothing half-written is ever visible in the cache;
- secrets and credentials are never logged, hashed into keys, or written to disk by this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amber.builds.executor import BuildArtifact, BuildJob
from amber.builds.pipeline.base import prepare_oci_base
from amber.builds.pipeline.context import BuildContextFiles, ContextError
from amber.builds.pipeline.credentials import base_image_credentials
from amber.builds.pipeline.dockerfile import build_dockerfile_disk, dockerfile_cache_decision
from amber.builds.pipeline.events import BuildLog, OutputPump
from amber.builds.pipeline.guest_ops import GuestState, StepError, agent_user, apply_ops, run_shell
from amber.builds.pipeline.machine import BuildMachine, MachineSpec, VmBackend
from amber.builds.pipeline.readiness import NotReady, describe, wait_until_ready
from amber.builds.pipeline.store import CacheStore, EntryClaim, EntryHold
from amber.builds.pipeline.template_base import ARTIFACT_MANIFEST, prepare_template_base
from amber.builds.planning.build_plan import BuildPlan
from amber.builds.planning.cache import CacheDecision, final_artifact_key, step_key
from amber.builds.planning.runtime import (
    ImageDefaults,
    RuntimeDefaults,
    image_defaults,
    image_env,
    map_healthcheck,
    step_state,
)
from amber.builds.planning.steps import StepPlan
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import CacheKind, CacheReason, CacheStatus, Emit, LogPhase
from amber.oci.errors import ImageImportError

BOOT_WAIT_SECS = 180.0  # longer than the VM driver's own boot timeout


@dataclass(frozen=True)
class BaseImage:
    """A root disk to start from, plus the image config the runtime defaults come from."""

    chain: tuple[Path, ...]  # bottom first: a raw root disk, then (for a template base) its qcow2 layers
    defaults: ImageDefaults
    key: str  # cache key of the disk (for the step chain)
    oci_metadata: dict[str, Any] | None = None
    cacheable: bool = True  # False: neither step layers nor the final artifact are looked up or stored
    uncacheable_reason: CacheReason = CacheReason.BUILDER_CACHE_BOUNDARY  # why, when not cacheable
    entry: EntryHold | None = None  # the held base cache entry; None: the base is private (layers not cached)


@dataclass(frozen=True)
class _Keyed:
    """The stored plan over the base the build got: cache keys and decisions, runtime defaults, step env."""

    plan: BuildPlan
    base: BaseImage
    context: BuildContextFiles
    keys: list[str]  # chain key per step
    decisions: list[CacheDecision]  # per step
    final_key: str
    final_decision: CacheDecision
    runtime: RuntimeDefaults
    user: str  # runtime.user and .workdir, known: the base's image config is complete
    workdir: str
    step_env: dict[str, str]  # image env + build_envs: what steps see


@dataclass
class _Attempt:
    """Per-build mutable state that the cleanup needs."""

    work_dir: Path
    artifact_dir: Path
    claims: list[EntryHold] = field(default_factory=list)  # cache entries this build creates or uses (hits)
    top: EntryHold | None = None  # the cache entry the next step's layer is a delta over; None: chain is private
    machine: BuildMachine | None = None
    booting: asyncio.Future[BuildMachine] | None = None
    open_claim: EntryClaim | None = None  # the cache entry the running step writes into
    pumps: list[OutputPump] = field(default_factory=list)
    done: bool = False


class NativeExecutor:
    """Runs native builds on ``vm`` (see ``amber.builds.pipeline.create_executor`` for the real backend).

    Cache entries live under ``<data_dir>/cache/build``; image layers in ``amber.oci``'s shared cache
    ``<data_dir>/cache/layers``; artifacts in ``<data_dir>/artifacts/<build_id>``; per-build work files in
    ``<data_dir>/builds/<build_id>`` (removed when the attempt ends).
    """

    def __init__(self, *, data_dir: Path, vm: VmBackend, git_local_roots: Sequence[Path] = ()) -> None:
        self.data_dir = data_dir
        self.git_local_roots = tuple(git_local_roots)  # AMBER_GIT_LOCAL_ROOTS: where git_clone may read paths
        self.cache = CacheStore(data_dir / "cache" / "build")
        self.layer_cache = data_dir / "cache" / "layers"
        self.vm = vm

    async def run(self, job: BuildJob, emit: Emit, cancel: asyncio.Event) -> BuildArtifact:
        plans = list(job.plan.steps)
        log = BuildLog(emit, len(plans))
        data_dir = job.data_dir.resolve()  # the artifact path is stored: never relative to a working directory
        attempt = _Attempt(
            work_dir=data_dir / "builds" / job.build_id, artifact_dir=data_dir / "artifacts" / job.build_id
        )
        work = asyncio.ensure_future(self._build(job, plans, log, attempt, cancel))
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
            await self._cleanup(attempt, log)

    # ------------------------------------------------------------------------------------------------------------

    async def _build(
        self,
        job: BuildJob,
        plans: list[StepPlan],
        log: BuildLog,
        attempt: _Attempt,
        cancel: asyncio.Event,
    ) -> BuildArtifact:
        shutil.rmtree(attempt.artifact_dir, ignore_errors=True)
        shutil.rmtree(attempt.work_dir, ignore_errors=True)
        attempt.work_dir.mkdir(parents=True)
        try:
            fingerprint = await asyncio.to_thread(self.vm.fingerprint)
        except Exception as exc:
            raise BuildFailed(f"the build VM cannot start on this server: {exc}", phase=FailurePhase.PREPARE) from None
        try:
            context = BuildContextFiles(job.plan.context_files(job.inputs.inline_files), job.blob_paths)
        except ContextError as exc:
            raise BuildFailed(str(exc), phase=FailurePhase.PREPARE) from None
        base_decision, decisions, final = job.plan.cache_decisions()
        base = await self._prepare_base(job, base_decision, fingerprint, attempt, log, cancel)
        plan = self._keyed(job.plan, base, decisions, final, context, fingerprint)

        # cache: how far the step layers go, and whether the whole artifact exists
        hits = 0
        attempt.top = plan.base.entry if plan.base.cacheable else None
        for step, key, decision in zip(plans, plan.keys, plan.decisions, strict=True):
            use = self.cache.use(self.cache.layer_path(key), attempt.top) if decision.lookup and attempt.top else None
            if use is None:
                break
            attempt.claims.append(use)
            attempt.top = use
            hits += 1
            await log.cache(CacheKind.LAYER, CacheStatus.HIT, step.description,
                            f"step {step.index}/{len(plans)} cached: {step.description}", step=step.index)  # fmt: skip
        final_dir = self.cache.final_path(plan.final_key)
        final_hit = None
        if hits == len(plans) and plan.final_decision.lookup and attempt.top is not None:
            final_hit = self.cache.use(final_dir, attempt.top)
        if final_hit is not None:
            attempt.claims.append(final_hit)
            await log.cache(CacheKind.FINAL_ARTIFACT, CacheStatus.HIT, "template artifact",
                            "the whole template is cached; reusing its snapshot")  # fmt: skip
            await asyncio.to_thread(_link_tree, final_dir, attempt.artifact_dir)
            return await self._finish(attempt, log, plan, write_manifest=False)
        if plan.final_decision.lookup:
            await log.cache(CacheKind.FINAL_ARTIFACT, CacheStatus.MISS, "template artifact",
                            "template artifact not cached", reason=CacheReason.MISSING_OR_INCOMPATIBLE)  # fmt: skip

        machine = await self._boot(plan, plans, hits, attempt, log)
        await self._run_steps(machine, plan, plans, hits, attempt, log)
        await log.info(LogPhase.SYNC, "syncing guest filesystems")
        await asyncio.to_thread(machine.agent.sync)
        await self._start_and_wait(machine, plan, attempt, log, cancel)
        await self._snapshot(machine, attempt, log)
        artifact = await self._finish(attempt, log, plan, write_manifest=True)
        await self._store_final(plan, final_dir, attempt, log)
        artifact.cache_summary = log.cache_summary()  # now including the final store
        return artifact

    async def _prepare_base(
        self,
        job: BuildJob,
        decision: CacheDecision,
        fingerprint: str,
        attempt: _Attempt,
        log: BuildLog,
        cancel: asyncio.Event,
    ) -> BaseImage:
        """``preparing``: the root disk to start from (a BuildKit build, a parent template's disk chain, or an
        OCI image cached by manifest digest)."""
        plan = job.plan
        if plan.base_kind == "dockerfile":
            decision = dockerfile_cache_decision(plan, decision)
            built = await build_dockerfile_disk(
                plan, job.inputs, data_dir=self.data_dir, work_dir=attempt.work_dir, blob_paths=job.blob_paths,
                emit=log.forward, log=log, cancel=cancel, store=self.cache, decision=decision, claims=attempt.claims,
                guest_fingerprint=fingerprint,
            )  # fmt: skip
            return BaseImage(
                (built.disk,), image_defaults(built.image_config), built.key or f"dockerfile:{job.build_id}",
                built.image_config.oci_metadata() or None, cacheable=decision.lookup, entry=built.entry,
                uncacheable_reason=decision.reason or CacheReason.BUILDER_CACHE_BOUNDARY,
            )  # fmt: skip
        if plan.base_kind == "template":
            await log.info(LogPhase.PREPARING, f"preparing base template {plan.base_ref}")
            template = await prepare_template_base(
                plan.base_ref,
                job.base_template_artifact,
                decision=decision,
                log=log,
                store=self.cache,
                work_dir=attempt.work_dir,
                claims=attempt.claims,
            )
            return BaseImage(template.chain, template.defaults, template.key, template.oci_metadata,
                             entry=template.entry)
        await log.info(LogPhase.PREPARING, f"preparing base image {plan.base_ref}")
        try:
            credentials = base_image_credentials(plan.base_ref, job.inputs)
        except (ValueError, ImageImportError) as exc:
            raise BuildFailed(f"base_image_auth: {exc}", phase=FailurePhase.AUTH) from None
        disk, resolved, key, entry = await prepare_oci_base(
            plan.base_ref,
            credentials=credentials,
            decision=decision,
            disk_mb=plan.vm.disk_mb,
            log=log,
            store=self.cache,
            layer_cache=self.layer_cache,
            work_dir=attempt.work_dir,
            claims=attempt.claims,
            guest_fingerprint=fingerprint,
        )
        return BaseImage((disk,), image_defaults(resolved.config), key, resolved.config.oci_metadata() or None,
                         entry=entry)

    def _keyed(
        self,
        plan: BuildPlan,
        base: BaseImage,
        decisions: list[CacheDecision],
        final: CacheDecision,
        context: BuildContextFiles,
        fingerprint: str,
    ) -> _Keyed:
        """The plan over this base: chain keys, final key, decisions (none cached over a private base), runtime."""
        build_envs = dict(plan.build_envs)
        keys: list[str] = []
        parent = base.key
        for step in plan.steps:
            parent = step_key(parent, step, plan.copied(step), build_envs)
            keys.append(parent)
        runtime = plan.runtime_defaults(base.defaults)
        assert runtime.user is not None and runtime.workdir is not None, "a booted base's image config is complete"
        vm = plan.vm
        final_key = final_artifact_key(
            parent, runtime, vcpus=vm.vcpus, memory_mib=vm.memory_mib, disk_mb=vm.disk_mb,
            internet_access=vm.internet_access, guest_fingerprint=fingerprint,
        )  # fmt: skip
        if not base.cacheable:
            decisions = [CacheDecision(base.uncacheable_reason) for _ in plan.steps]
            final = CacheDecision(base.uncacheable_reason)
        return _Keyed(
            plan=plan,
            base=dataclasses.replace(base, oci_metadata=_with_mapped_readiness(base.oci_metadata, base.defaults)),
            context=context,
            keys=keys,
            decisions=decisions,
            final_key=final_key,
            final_decision=final,
            runtime=runtime,
            user=runtime.user,
            workdir=runtime.workdir,
            step_env=image_env(base.defaults) | build_envs,
        )

    def _overlay_for(
        self, position: int, plan: _Keyed, plans: list[StepPlan], attempt: _Attempt
    ) -> tuple[Path, EntryClaim | None]:
        """Where the writes of step ``position`` (0-based) go: straight into its cache entry (claimed now), or a
        private file when the cache is bypassed or another build is making that entry; past the last step, the
        top overlay that the start command and the snapshot use."""
        if position >= len(plans):
            return attempt.work_dir / "top.qcow2", None
        # A layer is cached only over a cached parent: once one step is private, every later one is too.
        parent = attempt.top
        wanted = plan.decisions[position].lookup and parent is not None
        claim = self.cache.claim(self.cache.layer_path(plan.keys[position]), parent) if wanted else None
        attempt.top = claim
        if claim is None:
            return attempt.work_dir / f"step-{position + 1:03d}.qcow2", None
        attempt.claims.append(claim)
        return claim.path, claim

    async def _boot(
        self, plan: _Keyed, plans: list[StepPlan], hits: int, attempt: _Attempt, log: BuildLog
    ) -> BuildMachine:
        """``vm_create``: boot the base and the cached layers, writing into the first uncached step's entry."""
        chain = (*plan.base.chain, *(self.cache.layer_path(k) for k in plan.keys[:hits]))
        overlay, attempt.open_claim = self._overlay_for(hits, plan, plans, attempt)
        vm = plan.plan.vm
        await log.info(LogPhase.VM_CREATE, f"booting the build VM: {vm.vcpus} vCPU, {vm.memory_mib} MiB, "
                                           f"network {'on' if vm.internet_access else 'off'}")  # fmt: skip
        started = time.monotonic()
        spec = MachineSpec(chain=chain, overlay=overlay, cpus=vm.vcpus, memory_mib=vm.memory_mib,
                           network=vm.internet_access)  # fmt: skip
        # Shielded: if the build is cancelled mid-boot, the cleanup still gets the VM (and stops it).
        attempt.booting = asyncio.ensure_future(asyncio.to_thread(self.vm.boot, spec))
        try:
            attempt.machine = await asyncio.shield(attempt.booting)
        except Exception as exc:
            raise BuildFailed(f"the build VM did not start: {exc}", phase=FailurePhase.PREPARE) from None
        await log.info(LogPhase.VM_CREATE, f"build VM up in {time.monotonic() - started:.2f} s")
        return attempt.machine

    async def _run_steps(
        self, machine: BuildMachine, plan: _Keyed, plans: list[StepPlan], hits: int, attempt: _Attempt,
        log: BuildLog,
    ) -> None:  # fmt: skip
        """``step``: run every uncached step, then freeze its writes into a layer and publish it."""
        user, workdir = step_state(plans[:hits], plan.base.defaults)
        assert user is not None and workdir is not None, "a booted base's image config is complete"
        state = GuestState(user, workdir)
        for position in range(hits, len(plans)):
            step = plans[position]
            await self._report_step_cache(log, step, plan.decisions[position], len(plans))
            await log.info(LogPhase.STEP, f"step {step.index}/{len(plans)}: {step.description}", step=step.index)
            pump = OutputPump(log, LogPhase.STEP, step.index)
            started = time.monotonic()
            try:
                await asyncio.to_thread(
                    apply_ops, machine.agent, step.ops, context=plan.context, state=state, env=plan.step_env,
                    on_line=pump.line, step_index=step.index, scratch=attempt.work_dir / "git",
                    network=plan.plan.vm.internet_access,
                    git_local_roots=self.git_local_roots,
                )  # fmt: skip
            except StepError as exc:
                raise BuildFailed(exc.message, phase=FailurePhase.BUILD_STEP, step_index=step.index,
                                  details=exc.details) from None
            finally:
                await pump.close()
            claim = attempt.open_claim
            next_overlay, attempt.open_claim = self._overlay_for(position + 1, plan, plans, attempt)
            await asyncio.to_thread(machine.checkpoint, next_overlay)
            await log.info(LogPhase.STEP, f"step {step.index}/{len(plans)} done in {time.monotonic() - started:.2f} s",
                           step=step.index)  # fmt: skip
            if claim is not None:
                await asyncio.to_thread(claim.publish)
                await log.cache(CacheKind.LAYER, CacheStatus.STORED, step.description,
                                f"step {step.index} stored in the layer cache", step=step.index)  # fmt: skip

    async def _start_and_wait(
        self, machine: BuildMachine, plan: _Keyed, attempt: _Attempt, log: BuildLog, cancel: asyncio.Event,
    ) -> None:  # fmt: skip
        """``startup`` and ``readiness``: launch the start command and wait until the probe passes."""
        runtime = plan.runtime
        loop = asyncio.get_running_loop()
        start_exit: asyncio.Future[str] = loop.create_future()
        if runtime.start_cmd:
            attempt.pumps.append(await self._start(machine, plan, log, start_exit, loop))
        if runtime.readiness is not None:
            await self._wait_ready(machine, plan, log, start_exit, cancel)
        elif runtime.start_cmd:
            await log.info(LogPhase.READINESS, "no readiness probe: snapshotting right after the start")
        if start_exit.done():
            raise BuildFailed(_start_failed(start_exit.result(), "before the snapshot"),
                              phase=FailurePhase.READINESS, details={"command": runtime.start_cmd})  # fmt: skip

    async def _snapshot(self, machine: BuildMachine, attempt: _Attempt, log: BuildLog) -> None:
        """``snapshot``: memory, device state and disk chain into the artifact directory; the VM ends."""
        for pump in attempt.pumps:
            await pump.close()
        attempt.pumps.clear()
        await log.info(LogPhase.SNAPSHOT, "snapshotting the running VM")
        started = time.monotonic()
        snapshot = asyncio.ensure_future(asyncio.to_thread(machine.snapshot, attempt.artifact_dir))
        try:
            await asyncio.shield(snapshot)
        except asyncio.CancelledError:
            # Cancelled or timed out mid-snapshot: end the VM so the snapshot thread fails at once and removes its
            # staging directory, and wait for it, so nothing is written after the cleanup removes the artifact.
            await asyncio.to_thread(machine.close)
            await asyncio.wait({snapshot})
            if not snapshot.cancelled():
                snapshot.exception()  # retrieved: the failure is the cancellation's consequence
            raise
        except Exception as exc:
            raise BuildFailed(f"snapshot failed: {exc}", phase=FailurePhase.SNAPSHOT) from None
        finally:
            attempt.machine = None
        await log.info(LogPhase.SNAPSHOT, f"snapshot written in {time.monotonic() - started:.2f} s")

    async def _store_final(self, plan: _Keyed, final_dir: Path, attempt: _Attempt, log: BuildLog) -> None:
        """Keep the finished artifact as the final-artifact cache entry (hard links), unless bypassed."""
        if not plan.final_decision.lookup:
            await log.cache(CacheKind.FINAL_ARTIFACT, CacheStatus.BYPASS, "template artifact",
                            "template artifact not cached: part of this build bypassed the cache",
                            reason=plan.final_decision.reason)  # fmt: skip
            return
        claim = self.cache.claim(final_dir, attempt.top) if attempt.top is not None else None
        if claim is None:
            return  # another build is storing the same artifact, or the layer chain is private
        attempt.claims.append(claim)
        await asyncio.to_thread(_link_tree, attempt.artifact_dir, final_dir)
        await asyncio.to_thread(claim.publish)
        await log.cache(CacheKind.FINAL_ARTIFACT, CacheStatus.STORED, "template artifact",
                        "template artifact stored in the cache")  # fmt: skip

    async def _report_step_cache(self, log: BuildLog, plan: StepPlan, decision: CacheDecision, total: int) -> None:
        if decision.lookup:
            await log.cache(CacheKind.LAYER, CacheStatus.MISS, plan.description,
                            f"step {plan.index}/{total} not cached: {plan.description}",
                            reason=CacheReason.MISSING_OR_INCOMPATIBLE, step=plan.index)  # fmt: skip
        else:
            why = {
                CacheReason.WHOLE_BUILD_SKIP_CACHE: "skip_cache is set for the whole build",
                CacheReason.FORCE_UPLOAD: "the copy forces a fresh upload",
            }.get(decision.reason or CacheReason.BUILDER_CACHE_BOUNDARY, "after a skip_cache boundary")
            await log.cache(CacheKind.LAYER, CacheStatus.BYPASS, plan.description,
                            f"step {plan.index}/{total} rebuilt: {why}", reason=decision.reason,
                            step=plan.index)  # fmt: skip

    async def _start(
        self,
        machine: BuildMachine,
        plan: _Keyed,
        log: BuildLog,
        start_exit: asyncio.Future[str],
        loop: asyncio.AbstractEventLoop,
    ) -> OutputPump:
        """Start the start command in the guest without waiting for it; its output is logged until the
        returned pump is closed (at the snapshot). ``start_exit`` is set if it fails (non-zero exit, signal)
        before the snapshot; a zero exit is allowed (daemons fork and return)."""
        runtime = plan.runtime
        command = runtime.start_cmd or ""
        await log.info(LogPhase.STARTUP, f"starting: {command}")
        pump = OutputPump(log, LogPhase.STARTUP, None, limit=200)
        on_line = pump.line

        def run() -> None:
            try:
                run_shell(machine.agent, command, env=runtime.env, cwd=plan.workdir,
                          user=agent_user(plan.user), on_line=on_line, what="start command")  # fmt: skip
            except StepError as exc:
                loop.call_soon_threadsafe(_settle, start_exit, exc.message.removeprefix("start command "))
                return
            except Exception:  # the VM went away (snapshot or cancel): the command did not "exit"
                return
            # Exit 0 is fine: a daemon forks and returns; the readiness probe decides whether it serves.
            on_line("(start command exited with code 0; its background processes keep running)")

        # The start command keeps running in the VM; its exec stream simply ends with the snapshot.
        threading.Thread(target=run, name="amber-start-cmd", daemon=True).start()
        return pump

    async def _wait_ready(
        self,
        machine: BuildMachine,
        plan: _Keyed,
        log: BuildLog,
        start_exit: asyncio.Future[str],
        cancel: asyncio.Event,
    ) -> None:
        runtime = plan.runtime
        readiness = runtime.readiness
        assert readiness is not None
        source = " (from the image HEALTHCHECK)" if runtime.readiness_from_healthcheck else ""
        await log.info(LogPhase.READINESS, f"waiting for {describe(readiness)}{source}")
        agent = machine.agent

        def check(timeout: float) -> str | None:
            if start_exit.done():
                return f"start command {start_exit.result()}"
            try:
                if readiness.kind == "tcp":
                    agent.tcp_probe(readiness.port or 0, timeout=min(timeout, 2.0))
                    return None
                if readiness.kind == "http":
                    status = agent.http_probe(readiness.port or 0, readiness.path or "/", timeout=min(timeout, 2.0))
                    return None if 200 <= status < 400 else f"HTTP status {status}"
                result = agent.exec(shell=readiness.command or "true", env=dict(runtime.env), cwd=plan.workdir,
                                    user=agent_user(plan.user), timeout=timeout)  # fmt: skip
                return None if result.ok else f"command exited with code {result.exit_code}"
            except Exception as exc:
                return str(exc) or type(exc).__name__

        async def probe(timeout: float) -> str | None:
            failure = await asyncio.to_thread(check, timeout)
            if failure is not None and start_exit.done():
                raise BuildFailed(_start_failed(start_exit.result(), "before it was ready"),
                                  phase=FailurePhase.READINESS, details={"command": runtime.start_cmd})  # fmt: skip
            return failure

        started = time.monotonic()
        try:
            attempts = await wait_until_ready(readiness, probe, cancel)
        except NotReady as exc:
            details = {"command": runtime.start_cmd} if runtime.start_cmd else None
            raise BuildFailed(str(exc), phase=FailurePhase.READINESS, details=details) from None
        await log.info(LogPhase.READINESS, f"ready after {time.monotonic() - started:.2f} s ({attempts} attempts)")

    async def _finish(
        self, attempt: _Attempt, log: BuildLog, plan: _Keyed, *, write_manifest: bool
    ) -> BuildArtifact:
        """``finalize``: the pipeline's own manifest next to the VM artifact, and the ``BuildArtifact``."""
        await log.info(LogPhase.FINALIZE, "finalizing the template artifact")
        runtime_json = plan.runtime.to_json()
        digests = plan.plan.digests
        if write_manifest:
            meta = {
                "runtime_defaults": runtime_json,
                "runtime_env": plan.runtime.env,  # values stay server-side; the API shows keys only (R55)
                "oci_metadata": plan.base.oci_metadata,
                "source_digest": digests.source_digest,
                "dockerfile_digest": digests.dockerfile_digest,
                "context_digest": digests.context_digest,
            }
            await asyncio.to_thread(_write_json, attempt.artifact_dir / ARTIFACT_MANIFEST, meta)
        size = await asyncio.to_thread(_tree_size, attempt.artifact_dir)
        attempt.done = True
        return BuildArtifact(
            artifact_dir=attempt.artifact_dir,
            runtime_defaults=runtime_json,
            oci_metadata=plan.base.oci_metadata,
            cache_summary=log.cache_summary(),
            source_digest=digests.source_digest,
            dockerfile_digest=digests.dockerfile_digest,
            context_digest=digests.context_digest,
            size_bytes=size,
        )

    async def _cleanup(self, attempt: _Attempt, log: BuildLog) -> None:
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
        for claim in attempt.claims:
            claim.release()
        await asyncio.to_thread(shutil.rmtree, attempt.work_dir, True)
        if not attempt.done:
            await asyncio.to_thread(shutil.rmtree, attempt.artifact_dir, True)
        with contextlib.suppress(Exception):
            await log.debug(LogPhase.CLEANUP, "build VM stopped and work files removed")


def _with_mapped_readiness(metadata: dict[str, Any] | None, defaults: ImageDefaults) -> dict[str, Any] | None:
    """OCI metadata whose ``healthcheck.mapped_readiness`` is the probe this pipeline derives from it (R38)."""
    if not metadata or "healthcheck" not in metadata:
        return metadata
    health = dict(metadata["healthcheck"])
    mapped = map_healthcheck(defaults.healthcheck)
    if mapped is None:
        health.pop("mapped_readiness", None)
    else:
        health["mapped_readiness"] = mapped.to_json()
    return {**metadata, "healthcheck": health}


def _start_failed(outcome: str, when: str) -> str:
    """'exited with code 4; last output:\n…' → 'the start command exited with code 4 <when>; last output:\n…'."""
    how, sep, rest = outcome.partition(";")
    return f"the start command {how} {when}{sep}{rest}"


def _settle(future: asyncio.Future[str], outcome: str) -> None:
    if not future.done():
        future.set_result(outcome)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            yield Path(dirpath) / name


def _tree_size(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in _walk_files(root) if not p.is_symlink())


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` into ``dst`` (same filesystem; artifacts are never modified)."""
    for path in _walk_files(src):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.symlink_to(os.readlink(path))
        else:
            os.link(path, target)
