"""Commands in a machine: synchronous exec, background processes, and the start of a streamed command.

Forms (machines-api.md §5.5): ``shell: true`` runs ``command`` with ``/bin/sh -c``; otherwise argv =
``[command, *args]``. The user is the template's default user unless the request names one; cwd is the exec's,
else the machine's, else the template's workdir. Env: the agent's base env (template runtime env, then create
``envs``) under the exec's own ``envs``.

Answers: a non-zero exit is a normal answer; a command not found is exit 127 with the shell's message; a
missing cwd or unknown user is 400; a sync command past ``timeout_secs`` is killed (its process group) and
answered 504 ``exec_timeout``; an agent that does not answer is 502 ``exec_failed``. Background commands
treat ``timeout_secs`` as their start deadline only: they run until they exit, are killed, or the machine ends.
"""

from __future__ import annotations

import asyncio
import errno
import signal
from dataclasses import dataclass
from typing import Any

from amber.builds.pipeline.guest_ops import agent_user
from amber.contract.errors import InvalidRequest
from amber.contract.machines import (
    DEFAULT_EXEC_TIMEOUT_SECS,
    ExecRequest,
    check_exec,
    command_line,
    exec_argv,
    normalize_cwd,
    parse_model,
)
from amber.machines.errors import ExecFailed, ExecTimeout, NotFoundProblem
from amber.machines.live import LiveMachine
from amber.machines.processes import Listener, Process, exit_code_of
from amber.vm import AgentError, ExecResult, Job, VMError

SYNC_OUTPUT_CAP = 64 << 20  # bytes kept per stream of a synchronous exec; the rest is dropped


@dataclass(frozen=True)
class Command:
    """A validated exec request, resolved against the machine."""

    argv: list[str] | None
    shell: str | None
    env: dict[str, str]
    cwd: str
    user: str
    timeout_secs: int
    text: str  # how the process table shows it


def plan_command(live: LiveMachine, body: Any) -> tuple[Command, bool]:
    """(command, background) of an ExecRequest body."""
    req = parse_model(ExecRequest, body, "ExecRequest")
    check_exec(req)
    return resolve(live, req), bool(req.background)


def resolve(live: LiveMachine, req: ExecRequest) -> Command:
    argv, shell = exec_argv(req)
    return Command(argv=argv, shell=shell, env=dict(req.envs or {}), cwd=live.command_cwd(normalize_cwd(req.cwd)),
                   user=agent_user(req.user or live.user or "root"),
                   timeout_secs=req.timeout_secs or DEFAULT_EXEC_TIMEOUT_SECS, text=command_line(req))


def spawn_problem(exc: AgentError, command: Command) -> InvalidRequest | None:
    """A spawn failure the caller caused (missing cwd, unknown user) as a 400; None for a missing command."""
    message = str(exc)
    if message.startswith("exec: chdir"):
        return InvalidRequest("cwd", f"{command.cwd} is not an existing directory in the machine")
    if message.startswith("exec: exec "):
        return None
    return InvalidRequest("user", message.removeprefix("exec: "))


def not_found_result(exc: AgentError, command: Command) -> dict[str, Any]:
    """The shell's answer to a command that cannot be run: 127 (not found) or 126 (not executable)."""
    name = (command.argv or ["sh"])[0]
    if exc.errno in (errno.EACCES, errno.ENOEXEC, errno.EISDIR):
        return {"exit_code": 126, "stdout": "", "stderr": f"{name}: permission denied\n"}
    return {"exit_code": 127, "stdout": "", "stderr": f"{name}: command not found\n"}


class _Capped:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def __call__(self, data: bytes) -> None:
        room = SYNC_OUTPUT_CAP - self.size
        if room > 0:
            self.parts.append(data[:room])
            self.size += min(room, len(data))

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", errors="replace")


async def run(live: LiveMachine, command: Command) -> dict[str, Any]:
    """Run ``command`` to its end: ExecResponse ``{exit_code, stdout, stderr, pid}``."""
    out, err = _Capped(), _Capped()

    def call() -> ExecResult:
        return live.agent.exec(command.argv, shell=command.shell, env=command.env, cwd=command.cwd,
                               user=command.user, timeout=command.timeout_secs, on_stdout=out, on_stderr=err)

    try:
        result = await asyncio.to_thread(call)
    except AgentError as exc:
        problem = spawn_problem(exc, command)
        if problem is not None:
            raise problem from None
        return not_found_result(exc, command)
    except VMError as exc:
        raise ExecFailed(f"the machine's agent did not answer: {str(exc).splitlines()[0]}") from None
    finally:
        live.touch()
    if result.timed_out:
        raise ExecTimeout(f"the command did not finish within timeout_secs={command.timeout_secs} and was killed "
                          "(run long commands with background=True)")
    return {"exit_code": exit_code_of(result), "stdout": out.text(), "stderr": err.text(), "pid": result.pid}


async def start(live: LiveMachine, command: Command, listener: Listener | None = None) -> Process:
    """Start ``command`` in the background and return its process once it runs (registered in the table).
    Its stdin stays open (``send_stdin``) until it exits. ``listener`` hears every output and the exit from the
    first byte on."""
    process = Process(pid=0, command=command.text, request_id=0)
    if listener is not None:
        process.listen(listener)
    callbacks = live.job_callbacks(process)
    try:
        job: Job = live.agent.start(command.argv, shell=command.shell, env=command.env, cwd=command.cwd,
                                    user=command.user, stdin_open=True, on_start=callbacks.on_start,
                                    on_stdout=callbacks.on_stdout, on_stderr=callbacks.on_stderr,
                                    on_exit=callbacks.on_exit)
        await asyncio.to_thread(job.wait_started, float(command.timeout_secs))
    except AgentError as exc:
        problem = spawn_problem(exc, command)
        if problem is not None:
            raise problem from None
        raise InvalidRequest("command", not_found_result(exc, command)["stderr"].strip()) from None
    except VMError as exc:
        raise ExecFailed(f"the machine's agent did not answer: {str(exc).splitlines()[0]}") from None
    live.touch()
    process.job = job
    return process


def process_of(live: LiveMachine, pid: int) -> Process:
    process = live.processes.get(pid)
    if process is None:
        raise NotFoundProblem(f"no process {pid} in machine {live.id}")
    return process


async def kill(live: LiveMachine, pid: int) -> None:
    """SIGKILL to the process group of a background process (a finished one is fine)."""
    process = process_of(live, pid)
    if process.running and process.job is not None:
        try:
            process.job.signal(signal.SIGKILL)
        except (AgentError, VMError) as exc:
            raise ExecFailed(f"could not signal process {pid}: {exc}") from None


async def send_stdin(live: LiveMachine, pid: int, data: bytes) -> None:
    process = process_of(live, pid)
    if not process.running or process.job is None:
        raise InvalidRequest("pid", f"process {pid} has exited")
    job = process.job
    try:
        await asyncio.to_thread(job.send_stdin, data, 30.0)
    except ValueError as exc:
        raise InvalidRequest("data", str(exc)) from None
    except (AgentError, VMError) as exc:
        raise InvalidRequest("pid", f"process {pid} does not read stdin: {exc}") from None
