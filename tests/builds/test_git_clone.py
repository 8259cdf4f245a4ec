"""git_clone planning and the host side of its execution: which sources the request rules allow, the clone itself
(real git on a repository made here, confined: never the server), the tar streamed into the guest, and the
guest's unpack script."""

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
    tar_tree,
    unpack_script,
)
from amber.builds.pipeline.phases.start import start_failed
from amber.builds.planning.steps import GitCloneOp, plan_step
from amber.contract.request import parse_create_request
from amber.contract.steps import GitCloneStep
from amber.contract.validation import request_problems
from tests.support.network import HostListener, host_addresses


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


@pytest.mark.parametrize(("url", "refused"), [
    ("https://github.com/a/b.git", None), ("git@github.com:a/b.git", None), ("ssh://git@example.com/r.git", None),
    ("git://example.com/r.git", None), ("http://10.0.0.1/r.git", None), ("/srv/repo", None),
    ("file:///srv/repo.git", None),
    ("fd::3", "remote helper"), ("ext::sh -c touch% /tmp/pwned", "remote helper"),
    ("ftp://example.com/r.git", "ftp:// transport"), ("http://127.0.0.1:8080/r.git", "build server itself"),
    ("http://localhost/r.git", "build server itself"), ("http://[::1]:9/r.git", "build server itself"),
    ("git@127.0.0.1:r.git", "build server itself"),
])  # fmt: skip
def test_clone_sources_allowed_at_accept(url: str, refused: str | None) -> None:
    req = parse_create_request({"base_image": "127.0.0.1:1/x", "steps": [{"action": "git_clone", "url": url}]})
    problems = [p for p in request_problems(req) if p.field == "steps[0].url"]
    if refused is None:
        assert problems == []
    else:
        assert any(refused in p.message for p in problems), problems
    offline = parse_create_request({"base_image": "127.0.0.1:1/x", "build_config": {"internet_access": False},
                                    "steps": [{"action": "git_clone", "url": "https://example.com/r.git"}]})
    assert any("internet_access is false" in p.message for p in request_problems(offline))


def test_a_network_clone_never_reaches_the_server(repo: Path, tmp_path: Path) -> None:
    """Past the request rules (a host address the rules cannot know, a name resolving to loopback), the clone
    itself runs in the isolated network: the server's own HTTP repository refuses it."""
    served = tmp_path / "served"
    git("clone", "-q", "--bare", str(repo), str(served / "r.git"), cwd=tmp_path)
    git("update-server-info", cwd=served / "r.git")
    with HostListener() as listener:
        for host in ["localhost", *(a for a in host_addresses() if ":" not in a)]:
            url = f"http://{host}:{listener.port}/r.git"
            with pytest.raises(GitCloneError) as refused:
                clone_on_host(GitCloneOp(url, "/src"), tmp_path / "s", network=True, on_line=lambda _l: None)
            assert "failed" in refused.value.message, refused.value.message
        assert listener.connections == []


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
                "git@example.com:a/b.git"):  # fmt: skip
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
