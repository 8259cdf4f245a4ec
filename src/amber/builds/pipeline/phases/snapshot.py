"""Phase ``snapshot``: the running build VM's memory, device state and disk chain into the artifact directory.

The start command's output pumps are drained first (its last lines are logged before the VM pauses). The VM
ends with the snapshot, whether it succeeds or not (``attempt.machine`` is cleared: nothing is left to stop);
a snapshot cancelled mid-way ends the VM and is waited for, so it leaves no staging behind.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from amber.builds.pipeline.attempt import Attempt
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import LogPhase
from amber.vm import Machine


async def snapshot(attempt: Attempt, vm: Machine, artifact_dir: Path) -> None:
    for pump in attempt.pumps:
        await pump.close()
    attempt.pumps.clear()
    await attempt.log.info(LogPhase.SNAPSHOT, "snapshotting the running VM")
    started = time.monotonic()
    task = asyncio.ensure_future(asyncio.to_thread(vm.snapshot, artifact_dir))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # Cancelled or timed out mid-snapshot: end the VM so the snapshot thread fails at once and removes its
        # staging directory, and wait for it, so nothing is written after the cleanup removes the artifact.
        await asyncio.to_thread(vm.close)
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the failure is the cancellation's consequence
        raise
    except Exception as exc:
        raise BuildFailed(f"snapshot failed: {exc}", phase=FailurePhase.SNAPSHOT) from None
    finally:
        attempt.machine = None
    await attempt.log.info(LogPhase.SNAPSHOT, f"snapshot written in {time.monotonic() - started:.2f} s")
