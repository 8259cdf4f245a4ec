"""Executing planned step ops inside the build VM through the guest agent (blocking; call from a thread).

Shell ops run ``/bin/sh -c`` as the step's user (else the current USER) in the current WORKDIR, with the image
env plus ``build_envs`` (build envs exist only here, R56). Output is streamed line by line to ``on_line`` and the
last lines are kept for the failure message. COPY writes files through the agent (no tools needed in the
image); a directory that needs its own mode or owner, or is empty, is created with the image's ``mkdir``/
``chmod``/``chown``. ``git_clone`` clones on the server and untars into the guest (``pipeline/git_clone.py``).
"""

from __future__ import annotations

import errno
import posixpath
import shlex
import shutil
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from amber.builds.pipeline.context import BuildContextFiles, GuestDir, GuestFile, copy_operations
from amber.builds.pipeline.git_clone import GitCloneError, clone_on_host, display_command, unpack_in_guest
from amber.builds.planning.steps import CopyOp, GitCloneOp, ShellOp, UserOp, WorkdirOp, resolve_workdir
from amber.vm import AgentClient, AgentError, ExecResult

TAIL_LINES = 20
TAIL_CHARS = 2000


class StepError(Exception):
    """A step failed in the guest. ``message`` is for the user: what ran, how it ended, its last output."""

    def __init__(self, message: str, *, command: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.command = command  # the shell command that failed, for ``error_detail.details``
        self.exit_code = exit_code

    @property
    def details(self) -> dict[str, object] | None:
        if self.command is None:
            return None
        out: dict[str, object] = {"command": self.command}
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        return out


class LineSplitter:
    """Turns a byte stream into complete text lines (the last partial line comes out on ``flush``)."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._sink(line.decode("utf-8", "replace").rstrip("\r"))

    def flush(self) -> None:
        if self._buffer:
            self._sink(self._buffer.decode("utf-8", "replace"))
            self._buffer = b""


@dataclass
class GuestState:
    """USER and WORKDIR as the steps so far left them."""

    user: str
    workdir: str


def agent_user(user: str) -> str:
    """The agent's user argument; root is spelled numerically so images without /etc/passwd work."""
    return "0:0" if user in ("", "root", "0", "0:0") else user


def _ended(result: ExecResult) -> str:
    if result.timed_out:
        return "timed out"
    if result.signal is not None:
        return f"was killed by signal {result.signal}"
    return f"exited with code {result.exit_code}"


def run_shell(
    agent: AgentClient,
    command: str,
    *,
    env: Mapping[str, str],
    cwd: str,
    user: str,
    on_line: Callable[[str], None],
    what: str,
    timeout: float | None = None,
) -> None:
    """Run ``command``; raise ``StepError`` (with the last output lines) unless it exits 0."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def sink(line: str) -> None:
        tail.append(line)
        on_line(line)

    out, err = LineSplitter(sink), LineSplitter(sink)
    try:
        result = agent.exec(
            shell=command,
            env=dict(env),
            cwd=cwd,
            user=user,
            timeout=timeout,
            on_stdout=out.feed,
            on_stderr=err.feed,
        )
    except AgentError as exc:
        raise StepError(f"{what} could not start: {exc}", command=command) from None
    out.flush()
    err.flush()
    if not result.ok:
        last = "\n".join(tail)[-TAIL_CHARS:]
        detail = f"; last output:\n{last}" if last else " without output"
        code = result.exit_code if result.signal is None and not result.timed_out else None
        raise StepError(f"{what} {_ended(result)}{detail}", command=command, exit_code=code)


def _ensure_dir(agent: AgentClient, d: GuestDir, env: Mapping[str, str]) -> None:
    owner = d.owner or "0:0"
    script = (
        f"mkdir -p {shlex.quote(d.path)} && chmod {d.mode:o} {shlex.quote(d.path)} && "
        f"chown {shlex.quote(owner)} {shlex.quote(d.path)}"
    )
    result = agent.exec(shell=script, env=dict(env), timeout=60)
    if not result.ok:
        text = (result.stderr or result.stdout).decode("utf-8", "replace").strip()[-500:]
        raise StepError(f"creating directory {d.path} failed: {text or _ended(result)}")


def copy_into_guest(
    agent: AgentClient, op: CopyOp, context: BuildContextFiles, state: GuestState, env: Mapping[str, str]
) -> int:
    """Perform one COPY; returns the number of files written."""
    written = 0
    ops = copy_operations(op, context, state.workdir)
    dirs_with_files = {
        o.path.rsplit("/", 1)[0] or "/" for o in ops if isinstance(o, GuestFile)
    }  # dirs that write_file(make_parents) creates anyway
    for item in ops:
        if isinstance(item, GuestDir):
            plain = item.mode == 0o755 and item.owner is None and item.path in dirs_with_files
            if not plain:
                _ensure_dir(agent, item, env)
            continue
        data = item.source.read()
        try:
            try:
                agent.write_file(item.path, data, mode=item.mode, owner=item.owner, make_parents=True)
            except AgentError as exc:
                if exc.errno != errno.EISDIR:
                    raise
                # Docker: a destination that is an existing directory receives the file inside it.
                inside = posixpath.join(item.path, posixpath.basename(item.source.path))
                agent.write_file(inside, data, mode=item.mode, owner=item.owner, make_parents=True)
        except AgentError as exc:
            raise StepError(f"copying {item.source.path} to {item.path} failed: {exc}") from None
        written += 1
    return written


def apply_ops(
    agent: AgentClient,
    ops: tuple[object, ...],
    *,
    context: BuildContextFiles,
    state: GuestState,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    step_index: int,
    scratch: Path | None = None,
    network: bool = True,
    git_local_roots: Sequence[Path] = (),
) -> None:
    """Run one step's ops in order, updating ``state``. ``scratch`` is a host directory for ``git_clone``
    checkouts; ``network`` is the build's ``internet_access``; ``git_local_roots`` the directories a
    ``git_clone`` may name by local path or file:// URL."""
    for op in ops:
        if isinstance(op, GitCloneOp):
            _git_clone(agent, op, state=state, env=env, on_line=on_line, step_index=step_index,
                       scratch=scratch, network=network, local_roots=git_local_roots)  # fmt: skip
            continue
        if isinstance(op, ShellOp):
            run_shell(
                agent,
                op.command,
                env=env,
                cwd=state.workdir,
                user=agent_user(op.user or state.user),
                on_line=on_line,
                what=f"step {step_index}: command {op.command!r}",
            )
        elif isinstance(op, CopyOp):
            copy_into_guest(agent, op, context, state, env)
        elif isinstance(op, WorkdirOp):
            state.workdir = resolve_workdir(state.workdir, op.path)
            run_shell(
                agent,
                f"mkdir -p {shlex.quote(state.workdir)}",
                env=env,
                cwd="/",
                user="0:0",
                on_line=on_line,
                what=f"step {step_index}: creating WORKDIR {state.workdir}",
            )
        elif isinstance(op, UserOp):
            state.user = op.user


def _git_clone(
    agent: AgentClient,
    op: GitCloneOp,
    *,
    state: GuestState,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    step_index: int,
    scratch: Path | None,
    network: bool,
    local_roots: Sequence[Path],
) -> None:
    if scratch is None:
        raise ValueError("git_clone needs a scratch directory")
    try:
        tree = clone_on_host(op, scratch, network=network, on_line=on_line, local_roots=local_roots)
    except GitCloneError as exc:
        raise StepError(f"step {step_index}: {exc.message}", command=exc.command) from None
    try:
        code, output = unpack_in_guest(agent, tree, op, env=env, cwd=state.workdir, user=agent_user(state.user))
    except (AgentError, ValueError) as exc:
        raise StepError(f"step {step_index}: unpacking the clone of {op.url!r} at {op.path} failed: {exc}",
                        command=display_command(op)) from None
    finally:
        shutil.rmtree(tree.parent, ignore_errors=True)
    if code != 0:
        raise StepError(f"step {step_index}: unpacking the clone of {op.url!r} at {op.path} failed "
                        f"(exit code {code})" + (f": {output}" if output else ""),
                        command=display_command(op), exit_code=code)  # fmt: skip
