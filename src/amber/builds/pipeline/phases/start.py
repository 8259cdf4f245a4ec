"""Phase ``start`` (log phases ``startup``, ``readiness``): the template's start command, then its readiness probe.

The start command runs in the guest as the template's default user, in its default workdir, with its runtime
env (never ``build_envs``), without being waited for: its output is logged (at most 200 lines) until the
snapshot. It may exit 0 (a daemon forks and returns); exiting non-zero or by a signal before the snapshot fails
the build (``readiness``). The probe (``tcp``, ``http``, ``command``, ``timeout``) is retried by
``readiness.wait_until_ready``; a probe derived from the image HEALTHCHECK says so in the log.
"""

from __future__ import annotations

import asyncio
import threading
import time

from amber.builds.pipeline.attempt import Attempt, Chain
from amber.builds.pipeline.events import OutputPump
from amber.builds.pipeline.guest_ops import StepError, agent_user, run_shell
from amber.builds.pipeline.readiness import NotReady, describe, probe_once, wait_until_ready
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import LogPhase
from amber.vm import Machine


async def start_and_wait(attempt: Attempt, vm: Machine, chain: Chain) -> None:
    """Launch the start command and wait until the probe passes (pumps go to ``attempt.pumps``)."""
    runtime = chain.runtime
    loop = asyncio.get_running_loop()
    start_exit: asyncio.Future[str] = loop.create_future()
    if runtime.start_cmd:
        attempt.pumps.append(await _start(attempt, vm, chain, start_exit))
    if runtime.readiness is not None:
        await _wait_ready(attempt, vm, chain, start_exit)
    elif runtime.start_cmd:
        await attempt.log.info(LogPhase.READINESS, "no readiness probe: snapshotting right after the start")
    if start_exit.done():
        raise BuildFailed(start_failed(start_exit.result(), "before the snapshot"),
                          phase=FailurePhase.READINESS, details={"command": runtime.start_cmd})  # fmt: skip


async def _start(attempt: Attempt, vm: Machine, chain: Chain, start_exit: asyncio.Future[str]) -> OutputPump:
    """Start the start command in the guest without waiting for it; its output is logged until the returned
    pump is closed (at the snapshot). ``start_exit`` is set if it fails (non-zero exit, signal) before the
    snapshot; a zero exit is allowed (daemons fork and return)."""
    command = chain.runtime.start_cmd or ""
    loop = asyncio.get_running_loop()
    await attempt.log.info(LogPhase.STARTUP, f"starting: {command}")
    pump = OutputPump(attempt.log, LogPhase.STARTUP, None, limit=200)
    on_line = pump.line

    def run() -> None:
        try:
            run_shell(vm.agent, command, env=chain.runtime.env, cwd=chain.workdir, user=agent_user(chain.user),
                      on_line=on_line, what="start command")  # fmt: skip
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


async def _wait_ready(attempt: Attempt, vm: Machine, chain: Chain, start_exit: asyncio.Future[str]) -> None:
    runtime = chain.runtime
    readiness = runtime.readiness
    assert readiness is not None
    source = " (from the image HEALTHCHECK)" if runtime.readiness_from_healthcheck else ""
    await attempt.log.info(LogPhase.READINESS, f"waiting for {describe(readiness)}{source}")
    agent = vm.agent

    def check(timeout: float) -> str | None:
        if start_exit.done():
            return f"start command {start_exit.result()}"
        return probe_once(agent, readiness, env=runtime.env, cwd=chain.workdir, user=agent_user(chain.user),
                          timeout=timeout)

    async def probe(timeout: float) -> str | None:
        failure = await asyncio.to_thread(check, timeout)
        if failure is not None and start_exit.done():
            raise BuildFailed(start_failed(start_exit.result(), "before it was ready"),
                              phase=FailurePhase.READINESS, details={"command": runtime.start_cmd})  # fmt: skip
        return failure

    started = time.monotonic()
    try:
        attempts = await wait_until_ready(readiness, probe, attempt.cancel)
    except NotReady as exc:
        details = {"command": runtime.start_cmd} if runtime.start_cmd else None
        raise BuildFailed(str(exc), phase=FailurePhase.READINESS, details=details) from None
    await attempt.log.info(LogPhase.READINESS, f"ready after {time.monotonic() - started:.2f} s ({attempts} attempts)")


def start_failed(outcome: str, when: str) -> str:
    """'exited with code 4; last output:\n…' → 'the start command exited with code 4 <when>; last output:\n…'."""
    how, sep, rest = outcome.partition(";")
    return f"the start command {how} {when}{sep}{rest}"


def _settle(future: asyncio.Future[str], outcome: str) -> None:
    if not future.done():
        future.set_result(outcome)
