"""git_clone planning and the host side of its execution: which sources count as local, the clone itself (real
git on a repository made here), the tar streamed into the guest, and the guest's unpack script."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from amber.builds.pipeline.git_clone import (
    GitCloneError,
    check_local_roots,
    clone_on_host,
    display_command,
    is_local_source,
    tar_tree,
    unpack_script,
)
from amber.builds.pipeline.phases.start import start_failed
from amber.builds.planning.steps import GitCloneOp, plan_step
from amber.contract.steps import GitCloneStep


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert shutil.which("git"), "git is needed on the build server (and for this test)"
    root = tmp_path_factory.mktemp("repo")
    git("init", "-q", "-b", "main", cwd=root)
    (root / "README").write_text("hello\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "link").symlink_to("README")
    git("add", "-A", cwd=root)
    git("commit", "-qm", "init", cwd=root)
    git("checkout", "-qb", "feature", cwd=root)
    (root / "FEATURE").write_text("feat\n")
    git("add", "FEATURE", cwd=root)
    git("commit", "-qm", "feature", cwd=root)
    git("checkout", "-q", "main", cwd=root)
    return root


def test_plan_renders_the_sdk_line_and_a_clone_op() -> None:
    step = GitCloneStep(action="git_clone", url="https://example.com/x.git", path="/src", branch="dev", depth=1)
    plan = plan_step(3, step)
    assert plan.lines == ("RUN git clone --branch dev --depth 1 https://example.com/x.git /src",)
    assert plan.ops == (GitCloneOp("https://example.com/x.git", "/src", "dev", 1),)
    default = plan_step(1, GitCloneStep(action="git_clone", url="/repo"))
    assert default.ops == (GitCloneOp("/repo", "/workspace"),)
    assert display_command(GitCloneOp("/r", "/w", "b", 2)) == "git clone --branch b --depth 2 /r /w"


@pytest.mark.parametrize(("url", "local"), [
    ("/srv/repo", True), ("relative/repo", True), ("file:///srv/repo.git", True),
    ("http://127.0.0.1:8080/r.git", True), ("http://127.1.2.3/r.git", True), ("http://localhost/r.git", True),
    ("http://[::1]:9/r.git", True), ("https://github.com/a/b.git", False), ("git@github.com:a/b.git", False),
    ("ssh://git@example.com/r.git", False), ("http://10.0.0.1/r.git", False),
])  # fmt: skip
def test_local_sources(url: str, local: bool) -> None:
    assert is_local_source(url) is local


def test_clone_branch_and_tar(repo: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    tree = clone_on_host(GitCloneOp(str(repo), "/src", "feature"), tmp_path, network=False, on_line=lines.append,
                         local_roots=[repo.parent])  # fmt: skip
    assert (tree / "FEATURE").read_text() == "feat\n" and (tree / ".git").is_dir()
    assert not any(str(tmp_path) in line for line in lines), "server paths must not reach the build log"
    with tarfile.open(fileobj=io.BytesIO(tar_tree(tree))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/tool"].mode & 0o777 == 0o755 and members["bin/tool"].uid == 0
    assert members["link"].issym() and members["link"].linkname == "README"
    assert ".git/HEAD" in members and not any(name.startswith("/") for name in members)


def test_clone_failures_are_step_errors(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(GitCloneError) as missing_branch:
        clone_on_host(GitCloneOp(str(repo), "/src", "nope"), tmp_path, network=True, on_line=lambda _l: None,
                      local_roots=[repo])  # fmt: skip
    assert "nope" in missing_branch.value.message
    assert missing_branch.value.command == f"git clone --branch nope {repo} /src"
    with pytest.raises(GitCloneError) as offline:
        clone_on_host(GitCloneOp("https://example.invalid/x.git", "/src"), tmp_path, network=False,
                      on_line=lambda _l: None)  # fmt: skip
    assert "internet_access" in offline.value.message


def test_local_paths_need_a_configured_root(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root").mkdir()
    escape = tmp_path / "root" / "escape"
    escape.symlink_to(repo)  # inside the root by name, elsewhere in fact
    for url in (str(repo), f"file://{repo}"):
        with pytest.raises(GitCloneError) as refused:
            clone_on_host(GitCloneOp(url, "/src"), tmp_path / "s", network=True, on_line=lambda _l: None)
        assert "AMBER_GIT_LOCAL_ROOTS" in refused.value.message and refused.value.command == f"git clone {url} /src"
        assert str(repo) not in refused.value.message.replace(repr(url), "")  # names no server path of its own
    roots = [tmp_path / "root", outside]
    for url in (str(repo), str(escape), f"file://{escape}", f"{tmp_path}/root/../../{repo.name}", "relative/x"):
        with pytest.raises(GitCloneError, match="not inside a directory of the server setting AMBER_GIT_LOCAL_ROOTS"):
            check_local_roots(url, roots, cwd=tmp_path / "s")
    for url in (str(repo), f"file://{repo}/", f"{repo}/../{repo.name}", "https://example.com/x.git",
                "http://127.0.0.1:9/r.git", "git@example.com:a/b.git"):  # fmt: skip
        check_local_roots(url, [repo.parent / "." / repo.name], cwd=tmp_path)  # inside, or no local path
    tree = clone_on_host(GitCloneOp(f"file://{repo}", "/src"), tmp_path / "s", network=False, on_line=lambda _l: None,
                         local_roots=[repo])  # fmt: skip
    assert (tree / "README").read_text() == "hello\n"


def test_unpack_script_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    script = unpack_script(str(tmp_path / "dst"))
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "x").write_text("x")
    refused = subprocess.run(["sh", "-c", script], input=b"", capture_output=True)
    assert refused.returncode == 128 and b"not an empty directory" in refused.stderr
    empty = tmp_path / "empty"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    done = subprocess.run(["sh", "-c", unpack_script(str(empty))], input=data.getvalue(), capture_output=True)
    assert done.returncode == 0 and (empty / "a.txt").read_text() == "hi"


def test_start_failure_text_puts_the_cause_before_the_output() -> None:
    assert (start_failed("exited with code 4; last output:\ndying", "before it was ready")
            == "the start command exited with code 4 before it was ready; last output:\ndying")  # fmt: skip
    assert start_failed("was killed by signal 9 without output", "before the snapshot") == (
        "the start command was killed by signal 9 without output before the snapshot")
