"""``git_clone`` steps: clone on the build server, unpack the working tree into the guest.

BuildKit clones ``ADD <git url>`` sources on the build host too; doing the same here means the image needs no
git. Sources are ``https://``, ``http://``, ``ssh://``, ``git://`` (or scp-like) URLs, or a local path /
``file://`` URL naming a repository on the server, refused unless its real path (symlinks and ``..`` resolved)
lies inside one of ``AMBER_GIT_LOCAL_ROOTS`` (the request rules and the service check both at accept; this
module checks again). Git runs confined (``amber.isolation``): a network clone in the isolated network (the
outside world only: no loopback, no host address), a local clone with no network at all, and only the
protocols of its source (``GIT_ALLOW_PROTOCOL``: no ``ext::``/``fd::`` helpers). It runs without the server's
user or system configuration, never prompts for credentials, and is given a deadline
(``CLONE_TIMEOUT_SECS``). With ``internet_access=false`` only local paths are allowed. The tree (``.git`` included, as
``git clone`` leaves it) is streamed as a tar into ``tar -x`` in the guest, run as the step's USER in its
WORKDIR, so ownership is what ``RUN git clone`` would give.
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from amber.builds.planning.steps import GitCloneOp
from amber.isolation import IsolationError, confine
from amber.vm import AgentClient

CLONE_TIMEOUT_SECS = 600.0
MAX_TREE_BYTES = 2 * 1024**3


class GitCloneError(Exception):
    """A clone the user can fix (bad URL, unknown branch, network disabled); ``command`` is the git command."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.message = message
        self.command = command


def filesystem_path(url: str) -> str | None:
    """The server path a clone source reads directly (a local path or a ``file://`` URL), else None."""
    if "://" not in url:
        head = url.split("/", 1)[0]
        return url if ":" not in head else None
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        return unquote(parts.path)
    return None


def check_local_roots(url: str, roots: Sequence[Path], *, cwd: Path) -> None:
    """Refuse a local path or ``file://`` URL whose real path is not inside one of ``roots`` (realpath'd too);
    relative paths resolve against ``cwd`` (where git runs). Raises ``GitCloneError`` without server paths."""
    path = filesystem_path(url)
    if path is None:
        return
    command = f"git clone {url}"
    if not roots:
        raise GitCloneError(f"git_clone of {url!r} would read the build server's filesystem; local paths and "
                            "file:// URLs are refused unless the server setting AMBER_GIT_LOCAL_ROOTS lists a "
                            "directory holding the repository", command)  # fmt: skip
    resolved = Path(os.path.realpath(cwd / path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if resolved == real_root or resolved.is_relative_to(real_root):
            return
    raise GitCloneError(f"git_clone of {url!r} is refused: the path is not inside a directory of the server "
                        "setting AMBER_GIT_LOCAL_ROOTS", command)  # fmt: skip


def clone_command(op: GitCloneOp, dest: str) -> list[str]:
    argv = ["git", "clone", "--no-recurse-submodules"]
    if op.branch:
        argv += ["--branch", op.branch]
    if op.depth is not None:
        argv += ["--depth", str(op.depth)]
    return [*argv, "--", op.url, dest]


def display_command(op: GitCloneOp) -> str:
    """The clone as the user wrote it (the step's ``RUN`` line), for failure details."""
    argv = ["git", "clone"]
    if op.branch:
        argv += ["--branch", op.branch]
    if op.depth is not None:
        argv += ["--depth", str(op.depth)]
    return shlex.join([*argv, op.url, op.path])


NETWORK_PROTOCOLS = "https:http:ssh:git"


def _git_env(home: Path, *, local: bool) -> dict[str, str]:
    return {
        "GIT_ALLOW_PROTOCOL": "file" if local else NETWORK_PROTOCOLS,
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
        "LC_ALL": "C",
    }


def clone_on_host(
    op: GitCloneOp,
    scratch: Path,
    *,
    network: bool,
    on_line: Callable[[str], None],
    local_roots: Sequence[Path] = (),
) -> Path:
    """Clone into a fresh directory under ``scratch``; returns the working tree. Raises ``GitCloneError``.
    ``local_roots``: the directories local paths and ``file://`` URLs may name (empty: none)."""
    shown = display_command(op)
    local = filesystem_path(op.url) is not None
    if not network and not local:
        raise GitCloneError(f"git_clone of {op.url!r} needs network access, but internet_access is false "
                            "(only local paths can be cloned without it)", shown)  # fmt: skip
    git = shutil.which("git")
    if git is None:
        raise GitCloneError("git_clone: git is not installed on the build server", shown)
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="git-", dir=scratch))
    try:
        check_local_roots(op.url, local_roots, cwd=work)  # relative paths: from where git runs
    except GitCloneError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise GitCloneError(exc.message, shown) from None
    home = work / "home"
    home.mkdir()
    tree = work / "tree"
    argv = clone_command(op, str(tree))
    argv[0] = git
    try:
        argv = confine(argv, internet=not local)
    except IsolationError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise GitCloneError(f"git_clone: the clone cannot be isolated on this server: {exc}", shown) from None
    try:
        result = subprocess.run(argv, env=_git_env(home, local=local), cwd=work, capture_output=True, text=True,
                                errors="replace", timeout=CLONE_TIMEOUT_SECS, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise GitCloneError(f"git clone of {op.url!r} timed out after {CLONE_TIMEOUT_SECS:.0f} s", shown) from None
    text = (result.stdout + result.stderr).replace(str(tree), op.path)  # never show server paths
    output = [line for line in text.splitlines() if line.strip()]
    for line in output:
        on_line(line)
    if result.returncode != 0:
        last = "\n".join(output[-20:])
        raise GitCloneError(f"git clone of {op.url!r} failed (exit code {result.returncode})"
                            + (f"; last output:\n{last}" if last else ""), shown)  # fmt: skip
    return tree


def tar_tree(tree: Path) -> bytes:
    """The tree as an uncompressed tar with relative names, root-owned entries and the tree's modes."""
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(tree.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(tree)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isfile():
                total += info.size
                if total > MAX_TREE_BYTES:
                    raise ValueError(f"the cloned tree is larger than {MAX_TREE_BYTES} bytes")
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def unpack_script(path: str) -> str:
    """Shell for the guest: refuse a non-empty destination (as git does), create it, untar stdin into it."""
    p = shlex.quote(path)
    return (
        f"if [ -e {p} ] && {{ [ ! -d {p} ] || [ -n \"$(ls -A {p} 2>/dev/null)\" ]; }}; then "
        f"echo \"fatal: destination path '{path}' already exists and is not an empty directory.\" >&2; exit 128; fi; "
        f"mkdir -p {p} && tar -xf - -C {p}"
    )


def unpack_in_guest(
    agent: AgentClient, tree: Path, op: GitCloneOp, *, env: Mapping[str, str], cwd: str, user: str
) -> tuple[int | None, str]:
    """Untar the clone at ``op.path`` in the guest; (exit code, last output)."""
    data = tar_tree(tree)
    result = agent.exec(shell=unpack_script(op.path), env=dict(env), cwd=cwd, user=user, stdin=data,
                        timeout=CLONE_TIMEOUT_SECS)  # fmt: skip
    text = (result.stderr + result.stdout).decode("utf-8", "replace").strip()
    return result.exit_code, text[-2000:]
