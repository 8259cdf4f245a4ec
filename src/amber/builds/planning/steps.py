"""Declarative steps → what each becomes: Dockerfile lines (the SDK's reference rendering) and executable ops.

Pure. The Dockerfile text reproduces nullspace-sdk's ``to_dockerfile`` (``template.py`` ``_steps_to_dockerfile``)
line for line for every input the SDK can produce; where the SDK would emit something a Dockerfile parser
misreads (a ``"`` inside ``start_cmd``, a space inside an ``ENV`` value) we emit the properly quoted form.
The native pipeline executes the *ops*, which carry the same meaning without depending on ``su`` or a shell
for ``workdir``/``user``/``copy``.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from amber.contract.steps import (
    AptInstallStep,
    BunInstallStep,
    CopyItem,
    CopyItemsStep,
    CopyStep,
    GitCloneStep,
    MakeDirStep,
    MakeSymlinkStep,
    NpmInstallStep,
    PipInstallStep,
    RemoveStep,
    RenameStep,
    RunStep,
    SkipCacheStep,
    Step,
    UserStep,
    WorkdirStep,
    mode_bits,
)

DEFAULT_GIT_CLONE_PATH = "/workspace"


@dataclass(frozen=True)
class ShellOp:
    """Run ``command`` with ``/bin/sh -c`` as ``user`` (None: the current USER), in the current WORKDIR."""

    command: str
    user: str | None = None


@dataclass(frozen=True)
class CopyOp:
    """Docker COPY semantics: build-context ``sources`` into ``dst`` (relative to WORKDIR), owner and mode."""

    sources: tuple[str, ...]
    dst: str
    user: str | None = None
    mode: int | None = None
    force_upload: bool = False


@dataclass(frozen=True)
class WorkdirOp:
    path: str  # may be relative to the current WORKDIR; created if missing


@dataclass(frozen=True)
class UserOp:
    user: str


@dataclass(frozen=True)
class GitCloneOp:
    """``git_clone``: the build server clones ``url`` (as BuildKit does for ``ADD <git url>``, so loopback URLs
    and local paths mean the server's) and unpacks the working tree, ``.git`` included, at ``path`` (relative
    to WORKDIR) as the current USER — what ``RUN git clone`` leaves, without needing git in the image."""

    url: str
    path: str
    branch: str | None = None
    depth: int | None = None


@dataclass(frozen=True)
class CacheBoundaryOp:
    """``skip_cache``: nothing to run; this step and every later one bypass the layer cache (R46)."""


Op = ShellOp | CopyOp | WorkdirOp | UserOp | GitCloneOp | CacheBoundaryOp


@dataclass(frozen=True)
class StepPlan:
    """One request step. ``index`` is 1-based, the ``step_index`` of logs and failures."""

    index: int
    action: str
    lines: tuple[str, ...]  # Dockerfile instructions (empty for skip_cache)
    ops: tuple[Op, ...]

    @property
    def description(self) -> str:
        """One line for logs and ``cache_subject``."""
        if not self.lines:
            return self.action
        text = self.lines[0] if len(self.lines) == 1 else f"{self.lines[0]} (+{len(self.lines) - 1} more)"
        return text if len(text) <= 200 else text[:197] + "..."

    @property
    def force_upload(self) -> bool:
        return any(isinstance(op, CopyOp) and op.force_upload for op in self.ops)

    @property
    def is_cache_boundary(self) -> bool:
        return any(isinstance(op, CacheBoundaryOp) for op in self.ops)


# --- the SDK's shell renderings (template.py _package_install_command, _dockerfile_run_command, …) ---


def package_install_command(action: str, packages: Sequence[str], g: bool | None = None) -> str:
    joined = " ".join(packages)
    if action == "apt_install":
        return f"apt-get update && apt-get install -y {joined} && rm -rf /var/lib/apt/lists/*"
    if action == "pip_install":
        prefix = "pip install --user --no-cache-dir" if g is False else "pip install --no-cache-dir"
        return f"{prefix} {joined}"
    if action == "npm_install":
        return f"{'npm install -g' if g else 'npm install'} {joined}"
    if action == "bun_install":
        return f"{'bun add --global' if g else 'bun add'} {joined}"
    raise ValueError(f"not a package install action: {action}")


def su_command(command: str, user: str) -> str:
    return f"su -s /bin/sh -c {json.dumps(command)} {json.dumps(user)}"


def remove_command(step: RemoveStep) -> str:
    flags = "-" + ("r" if step.recursive else "") + ("f" if step.force else "")
    prefix = f"{flags} " if flags != "-" else ""
    return f"rm {prefix}{json.dumps(step.path)}"


def rename_command(step: RenameStep) -> str:
    return f"mv{' -f' if step.force else ''} {json.dumps(step.src)} {json.dumps(step.dst)}"


def make_dir_command(step: MakeDirStep) -> str:
    if step.mode is None:
        return f"mkdir -p {json.dumps(step.path)}"
    mode = step.mode if isinstance(step.mode, str) else format(mode_bits(step.mode), "04o")
    return f"mkdir -p {json.dumps(step.path)} && chmod {mode} {json.dumps(step.path)}"


def make_symlink_command(step: MakeSymlinkStep) -> str:
    return f"ln -s {json.dumps(step.target)} {json.dumps(step.path)}"


def git_clone_command(step: GitCloneStep) -> str:
    parts = ["git", "clone"]
    if step.branch:
        parts += ["--branch", step.branch]
    if step.depth is not None:
        parts += ["--depth", str(step.depth)]
    parts += [step.url, step.path if step.path is not None else DEFAULT_GIT_CLONE_PATH]
    return " ".join(parts)


def _copy_line(sources: Sequence[str], dst: str, user: str | None, mode: int | str | None) -> str:
    flags = []
    if user:
        flags.append(f"--chown={user}")
    if isinstance(mode, str) and mode:
        flags.append(f"--chmod={mode}")
    elif isinstance(mode, int):
        flags.append(f"--chmod={format(mode_bits(mode), '04o')}")
    srcs = [s.replace("\\", "/") for s in sources]
    d = dst.replace("\\", "/")
    plain = len(srcs) == 1 and not any(c.isspace() for c in srcs[0] + d)
    args = f"{srcs[0]} {d}" if plain else json.dumps([*srcs, d])
    return "COPY" + (" " + " ".join(flags) if flags else "") + " " + args


def _copy_op(item: CopyStep | CopyItem) -> CopyOp:
    return CopyOp(
        sources=tuple(item.sources),
        dst=item.dst,
        user=item.user or None,
        mode=mode_bits(item.mode) if item.mode is not None else None,
        force_upload=bool(item.force_upload),
    )


def plan_step(index: int, step: Step) -> StepPlan:
    """What request step number ``index`` (1-based) becomes."""
    lines: list[str] = []
    ops: list[Op] = []

    def shell(command: str, line: str | None = None, user: str | None = None) -> None:
        lines.append(f"RUN {line if line is not None else command}")
        ops.append(ShellOp(command, user))

    match step:
        case AptInstallStep() | PipInstallStep() | NpmInstallStep() | BunInstallStep():
            if step.packages:
                g = getattr(step, "g", None)
                shell(package_install_command(step.action, step.packages, g))
        case RunStep():
            shell(step.command, su_command(step.command, step.user) if step.user is not None else None, step.user)
        case WorkdirStep():
            lines.append(f"WORKDIR {step.path}")
            ops.append(WorkdirOp(step.path))
        case UserStep():
            lines.append(f"USER {step.user}")
            ops.append(UserOp(step.user))
        case RemoveStep():
            shell(remove_command(step))
        case RenameStep():
            shell(rename_command(step))
        case MakeDirStep():
            shell(make_dir_command(step))
        case MakeSymlinkStep():
            shell(make_symlink_command(step))
        case CopyStep():
            lines.append(_copy_line(step.sources, step.dst, step.user, step.mode))
            ops.append(_copy_op(step))
        case CopyItemsStep():
            for item in step.items:
                lines.append(_copy_line(item.sources, item.dst, item.user, item.mode))
                ops.append(_copy_op(item))
        case GitCloneStep():
            lines.append(f"RUN {git_clone_command(step)}")
            path = step.path if step.path is not None else DEFAULT_GIT_CLONE_PATH
            ops.append(GitCloneOp(step.url, path, step.branch or None, step.depth))
        case SkipCacheStep():
            ops.append(CacheBoundaryOp())
    return StepPlan(index=index, action=step.action, lines=tuple(lines), ops=tuple(ops))


def plan_steps(steps: Sequence[Step]) -> list[StepPlan]:
    return [plan_step(i, s) for i, s in enumerate(steps, start=1)]


_PLAIN_ENV_VALUE = re.compile(r"[^\s\"'\\$]*")


def env_line(key: str, value: str) -> str:
    # The SDK writes ENV k=v raw; quote only values a Dockerfile parser would otherwise split or expand.
    return f"ENV {key}={value}" if _PLAIN_ENV_VALUE.fullmatch(value) else f"ENV {key}={json.dumps(value)}"


def _cmd_line(start_cmd: str) -> str:
    # Identical to the SDK for commands without quotes/backslashes; valid JSON always.
    return f'CMD ["sh", "-c", {json.dumps(start_cmd, ensure_ascii=False)}]'


def render_dockerfile(
    base_image: str, plans: Sequence[StepPlan], build_envs: Mapping[str, str], start_cmd: str | None
) -> str:
    """The Dockerfile the declarative request corresponds to (no trailing newline, as the SDK)."""
    lines = [f"FROM {base_image}"]
    for plan in plans:
        lines.extend(plan.lines)
    lines.extend(env_line(k, v) for k, v in build_envs.items())
    if start_cmd:
        lines.append(_cmd_line(start_cmd))
    return "\n".join(lines)


def resolve_workdir(current: str, path: str) -> str:
    """Docker's WORKDIR rule: a relative path is relative to the current WORKDIR; result is normalised."""
    return posixpath.normpath(posixpath.join(current or "/", path))


def copy_destination(workdir: str, dst: str) -> str:
    """Absolute COPY destination; a trailing '/' (meaning 'into this directory') is kept."""
    absolute = resolve_workdir(workdir, dst)
    return absolute + "/" if dst.endswith("/") and absolute != "/" else absolute
