"""Phase ``steps`` (log phases ``vm_create``, ``step``): every step a layer, keyed by its chain key.

Each step is one ``CachedRunner`` entry (kind ``layer``, over the previous step's entry, or the base's). Cached
steps are used without a VM; the first uncached one boots the build VM over the base disk and the cached layers
(``boot``), with its writes going to a private overlay in the work directory. After a step's ops ran, the VM
freezes that overlay (``checkpoint_disk``) and continues on the next one; the frozen overlay is the step's layer and
is stored in the cache (hard link). Once the VM runs, later steps are not looked up: they build on this
attempt's own layers. ``step_index``/``total_steps`` are on every entry of a step.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from amber.builds.pipeline.attempt import Attempt, Chain
from amber.builds.pipeline.context import BuildContextFiles
from amber.builds.pipeline.events import OutputPump
from amber.builds.pipeline.guest_ops import GuestState, StepError, apply_ops
from amber.builds.pipeline.runner import Entry
from amber.builds.pipeline.store import EntryHold
from amber.builds.planning.runtime import step_state
from amber.builds.planning.steps import StepPlan
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import CacheKind, LogPhase
from amber.vm import DiskChain, Machine

BOOT_WAIT_SECS = 180.0  # how long the cleanup waits for a boot in flight (longer than the VM driver's own timeout)


def overlay_path(attempt: Attempt, position: int) -> Path:
    """Where the writes of step ``position`` (0-based) go; past the last step, the top overlay that the start
    command and the snapshot use."""
    if position >= len(attempt.plan.steps):
        return attempt.work_dir / "top.qcow2"
    return attempt.work_dir / f"step-{position + 1:03d}.qcow2"


async def boot(attempt: Attempt, chain: Chain, overlay: Path) -> Machine:
    """``vm_create``: boot the base and the cached layers, writing into ``overlay``."""
    vm = chain.plan.vm
    await attempt.log.info(LogPhase.VM_CREATE, f"booting the build VM: {vm.vcpus} vCPU, {vm.memory_mib} MiB, "
                                               f"network {'on' if vm.internet_access else 'off'}")  # fmt: skip
    started = time.monotonic()
    layers = (*chain.base.chain, *attempt.layers)

    def start() -> Machine:
        return attempt.vm.boot(DiskChain.of(*layers), overlay=overlay, cpus=vm.vcpus, memory_mib=vm.memory_mib,
                               internet=vm.internet_access, zero_freed_memory=bool(chain.plan.build_envs))

    # Shielded: if the build is cancelled mid-boot, the cleanup still gets the VM (and stops it).
    attempt.booting = asyncio.ensure_future(asyncio.to_thread(start))
    try:
        attempt.machine = await asyncio.shield(attempt.booting)
    except Exception as exc:
        raise BuildFailed(f"the build VM did not start: {exc}", phase=FailurePhase.PREPARE) from None
    await attempt.log.info(LogPhase.VM_CREATE, f"build VM up in {time.monotonic() - started:.2f} s")
    return attempt.machine


async def machine(attempt: Attempt, chain: Chain) -> Machine:
    """The running build VM; booted over every layer when all steps were cached."""
    if attempt.machine is not None:
        return attempt.machine
    return await boot(attempt, chain, overlay_path(attempt, len(chain.plan.steps)))


async def run_steps(attempt: Attempt, chain: Chain, context: BuildContextFiles) -> EntryHold | None:
    """Every step, cached or run. Returns the held entry of the last layer (the base's without steps), or None
    when the chain is private (nothing over it can be cached)."""
    steps = chain.plan.steps
    top = chain.base.hold if chain.base.uncacheable is None else None
    state: GuestState | None = None
    for position, step in enumerate(steps):
        entry = Entry(CacheKind.LAYER, attempt.cache.store.layer_path(chain.keys[position]), chain.decisions[position],
                      f"step {step.index}/{len(steps)}", step.description, parent=top, chained=True, step=step.index)

        async def make(overlay: Path, step: StepPlan = step, position: int = position) -> None:
            nonlocal state
            vm = attempt.machine or await boot(attempt, chain, overlay)
            if state is None:
                user, workdir = step_state(steps[:position], chain.base.defaults)
                assert user is not None and workdir is not None, "a booted base's image config is complete"
                state = GuestState(user, workdir)
            await _run_step(attempt, chain, context, vm, step, state, overlay_path(attempt, position + 1))

        result = await attempt.cache.run(entry, overlay_path(attempt, position), make,
                                         reuse=attempt.machine is None)  # fmt: skip
        if result.hit:
            attempt.layers.append(result.path)
        top = result.hold
    return top


async def _run_step(
    attempt: Attempt, chain: Chain, context: BuildContextFiles, vm: Machine, step: StepPlan, state: GuestState,
    next_overlay: Path,
) -> None:  # fmt: skip
    """Run the step's ops, then freeze its overlay into a layer and continue on ``next_overlay``."""
    log, total = attempt.log, len(chain.plan.steps)
    await log.info(LogPhase.STEP, f"step {step.index}/{total}: {step.description}", step=step.index)
    pump = OutputPump(log, LogPhase.STEP, step.index)
    started = time.monotonic()
    try:
        await asyncio.to_thread(
            apply_ops, vm.agent, step.ops, context=context, state=state, env=chain.step_env, on_line=pump.line,
            step_index=step.index, scratch=attempt.work_dir / "git", network=chain.plan.vm.internet_access,
            git_local_roots=attempt.git_local_roots,
        )  # fmt: skip
    except StepError as exc:
        raise BuildFailed(exc.message, phase=FailurePhase.BUILD_STEP, step_index=step.index,
                          details=exc.details) from None
    finally:
        await pump.close()
    await asyncio.to_thread(vm.checkpoint_disk, next_overlay)
    await log.info(LogPhase.STEP, f"step {step.index}/{total} done in {time.monotonic() - started:.2f} s",
                   step=step.index)  # fmt: skip
