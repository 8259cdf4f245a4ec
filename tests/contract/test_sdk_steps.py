"""Every declarative step kind through the unmodified SDK, as a user writes it: copies of directories and globs
with ignore patterns, modes and owners, file operations, git_clone from local paths (a loopback HTTP URL or a
path outside the allowed roots is refused), build vs runtime envs (R53/R55/R56), ``from_template`` shorthands,
and the failure reports of start commands, readiness probes and steps (phase, step_index, details, the terminal
entry's log phase). One SQLite server for the module (the PostgreSQL variants of the flows live in test_sdk.py)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from nullspace import BuildError, MachineError, Template, TemplateBuildLogEntry, wait_for_file, wait_for_port

from tests.contract.conftest import Sdk, unique

# One SQLite server for the module (the PostgreSQL variant of the shared flows runs in test_sdk.py).
pytestmark = [pytest.mark.vm, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True, scope="module")]


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)  # fmt: skip


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def git_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("git")


@pytest.fixture(scope="module")
def server_env(git_root: Path) -> dict[str, str]:
    """The server may clone repositories by path from ``git_root/work`` only (AMBER_GIT_LOCAL_ROOTS)."""
    return {"AMBER_GIT_LOCAL_ROOTS": str(git_root / "work")}


@pytest.fixture(scope="module")
def repos(git_root: Path) -> Iterator[tuple[Path, str]]:
    """A work tree (cloned by path) and its bare copy served over dumb HTTP on loopback: (path, url)."""
    assert shutil.which("git"), "git is needed on the build server (and for this test)"
    root = git_root
    work = root / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "README").write_text("hello from git\n")
    git("add", "-A", cwd=work)
    git("commit", "-qm", "init", cwd=work)
    git("checkout", "-qb", "feature", cwd=work)
    (work / "FEATURE").write_text("feature branch\n")
    git("add", "-A", cwd=work)
    git("commit", "-qm", "feature", cwd=work)
    git("checkout", "-q", "main", cwd=work)
    git("clone", "-q", "--bare", str(work), str(root / "repo.git"), cwd=root)
    git("update-server-info", cwd=root / "repo.git")
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield work, f"http://127.0.0.1:{httpd.server_address[1]}/repo.git"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ctx")
    (d / "app" / "sub").mkdir(parents=True)
    (d / "app" / "node_modules").mkdir()
    (d / "app" / "main.py").write_text("print('hi')\n")
    (d / "app" / "sub" / "a.txt").write_text("a\n")
    (d / "app" / "node_modules" / "junk.js").write_text("junk\n")
    (d / "app" / "debug.log").write_text("log\n")
    (d / "one.txt").write_text("one\n")
    (d / "two.txt").write_text("two\n")
    (d / ".dockerignore").write_text("**/node_modules\n")
    return d


def messages(entries: list[TemplateBuildLogEntry], phase: str) -> list[str]:
    return [e.message for e in entries if e.phase == phase and e.kind.value == "message"]


CHECKS = "; ".join([
    "ls -A /srv/app | tr '\\n' ' '; echo",
    "stat -c 'mode %n %a %U' /srv/app /srv/app/main.py /srv/items/two.txt /srv/made",
    "stat -c 'owner %n %U %u:%g' /srv/owned.txt /srv/items/one.txt",
    "cat /srv/multi/one.txt /srv/multi/two.txt",
    "echo link=$(readlink /srv/link.py)",
    "cat /srv/renamed.txt",
    "test ! -e /srv/gone && echo gone-ok",
    "cat /srv/src/README /opt/clone/FEATURE",
    "test -d /opt/clone/.git && stat -c 'clone %U' /opt/clone/README",
    "echo build=$BENV runtime=${RENV:-unset}",
])  # fmt: skip


def test_every_step_kind(sdk: Sdk, context: Path, repos: tuple[Path, str]) -> None:
    work, _url = repos
    template = (
        Template.from_image(sdk.base_image, file_context_path=str(context), file_ignore_patterns=["*.log"])
        .copy("app", "/srv/app", mode=0o750)
        .copy(["one.txt", "two.txt"], "/srv/multi/")
        .copy_items([("one.txt", "/srv/items/one.txt"), {"src": "two.txt", "dst": "/srv/items/", "mode": "0600"}],
                    user="1234:5678")
        .copy("one.txt", "/srv/owned.txt", user="nobody")
        .set_workdir("/srv")
        .make_dir("made", mode=0o700)
        .make_symlink("/srv/app/main.py", "/srv/link.py")
        .run_cmd("cp multi/one.txt tmp.txt")
    )
    template = (
        cast(Template, template.rename("/srv/tmp.txt", "/srv/renamed.txt"))  # typed for the class-level rename
        .run_cmd("mkdir -p gone/deep && touch gone/deep/x")
        .remove("/srv/gone", recursive=True, force=True)
        .git_clone(str(work), "/srv/src")
        .run_cmd("mkdir -p /opt && chown nobody /opt")
        .set_user("nobody")
        .git_clone(f"file://{work}", "/opt/clone", branch="feature")
        .run_cmd(CHECKS, user="root")
        .set_build_envs({"BENV": "build-only"})
        .set_runtime_envs({"RENV": "runtime-value"})
        .set_start_cmd("echo start build=${BENV:-unset} runtime=$RENV; exec sleep 100000", wait_for_file("/tmp"))
    )  # fmt: skip
    entries: list[TemplateBuildLogEntry] = []
    build = Template.build(template, unique("steps"), on_log_entry=entries.append, **sdk.acme)
    out = messages(entries, "step")
    assert "main.py sub " in out, out  # ignored by .dockerignore and file_ignore_patterns
    assert {"mode /srv/app 750 root", "mode /srv/app/main.py 750 root", "mode /srv/items/two.txt 600 UNKNOWN",
            "mode /srv/made 700 root"} <= set(out)  # fmt: skip
    assert {"owner /srv/owned.txt nobody 65534:65534", "owner /srv/items/one.txt UNKNOWN 1234:5678"} <= set(out)
    assert {"one", "two", "link=/srv/app/main.py", "gone-ok", "hello from git", "feature branch"} <= set(out)
    assert "clone nobody" in out  # unpacked as the current USER, as RUN git clone would
    # build envs reach the steps (their value is hidden in the stored log: build-only), runtime envs do not
    assert "build=*** runtime=unset" in out and not any("build-only" in m for m in out), out
    assert "start build=unset runtime=runtime-value" in messages(entries, "startup")
    assert not any("/builds/" in m for m in out), "server paths leaked into the log"
    step_entries = [e for e in entries if e.phase == "step"]
    assert {e.total_steps for e in step_entries} == {16}
    assert {e.step_index for e in step_entries} == set(range(1, 17))
    defaults = build.runtime_defaults
    assert defaults is not None and defaults.default_user == "nobody" and defaults.default_workdir == "/srv"
    assert "RENV" in defaults.default_env_keys and "BENV" not in defaults.default_env_keys
    assert "runtime-value" not in repr(build.runtime_defaults)  # keys only (R55)
    build.close()


def failure(sdk: Sdk, template: Template) -> tuple[BuildError, list[TemplateBuildLogEntry]]:
    entries: list[TemplateBuildLogEntry] = []
    with pytest.raises(BuildError) as caught:
        Template.build(template, unique("fails"), on_log_entry=entries.append, **sdk.acme)
    return caught.value, entries


def detail_of(error: BuildError) -> Any:
    detail = error.error_detail
    assert detail is not None
    return detail


def test_start_command_that_exits_fails_readiness(sdk: Sdk) -> None:
    error, entries = failure(sdk, Template.from_image(sdk.base_image)
                             .set_start_cmd("echo dying; exit 4", wait_for_port(8080)))  # fmt: skip
    detail = detail_of(error)
    assert detail.phase.value == "readiness" and detail.retryable is False
    assert str(error).startswith("the start command exited with code 4 before it was ready; last output:\ndying")
    assert detail.details["command"] == "echo dying; exit 4"
    assert entries[-1].kind.value == "error" and entries[-1].phase == "readiness"


def test_probe_that_never_passes_fails_readiness(sdk: Sdk) -> None:
    handle = Template.build_in_background(
        Template.from_image(sdk.base_image).set_start_cmd(
            "exec sleep 100000", wait_for_port(8081, timeout_secs=2, interval_ms=200, startup_grace_secs=0)),
        unique("never"), **sdk.acme)  # fmt: skip
    with pytest.raises(BuildError) as caught:
        handle.wait_until_terminal(poll_interval=0.2)
    assert "did not pass within 2 s" in str(caught.value)
    assert handle.status.value == "error" and handle.failure_phase == "readiness"
    last = list(handle.logs())[-1]
    assert last.kind.value == "error" and last.phase == "readiness" and last.level.value == "error"
    handle.close()


def test_failing_clone_is_a_build_step_failure(sdk: Sdk, repos: tuple[Path, str]) -> None:
    work, _url = repos
    error, entries = failure(sdk, Template.from_image(sdk.base_image).run_cmd("true")
                             .git_clone(str(work), "/src", branch="no-such-branch"))  # fmt: skip
    detail = detail_of(error)
    assert detail.phase.value == "build_step" and detail.step_index == 2
    assert detail.details["command"] == f"git clone --branch no-such-branch {work} /src"
    assert "no-such-branch" in str(error)
    assert entries[-1].phase == "step" and entries[-1].step_index == 2


def test_clone_sources_outside_the_rules_are_refused_at_accept(sdk: Sdk, repos: tuple[Path, str]) -> None:
    """A repository on the server outside AMBER_GIT_LOCAL_ROOTS, the server itself over HTTP, and git's remote
    helpers (``fd::``, ``ext::``) are 400s naming the step's url: nothing is queued, no worker is held."""
    work, url = repos
    bare = work.parent / "repo.git"  # a repository on the server, outside AMBER_GIT_LOCAL_ROOTS
    for source, reason in ((f"file://{bare}", "AMBER_GIT_LOCAL_ROOTS"), (str(bare), "AMBER_GIT_LOCAL_ROOTS"),
                           (url, "names the build server itself"), ("fd::3", "remote helper"),
                           ("ext::sh%%-c%%touch%%/tmp/pwned", "remote helper")):  # fmt: skip
        with pytest.raises(MachineError) as refused:
            Template.build_in_background(Template.from_image(sdk.base_image).git_clone(source, "/src"),
                                         unique("clone"), **sdk.acme)  # fmt: skip
        assert refused.value.code == "invalid_request", source
        assert "steps[0].url" in str(refused.value) and reason in str(refused.value), str(refused.value)


def test_from_template_shorthands_use_the_callers_template(sdk: Sdk) -> None:
    """The SDK sends ``nullspace/name:tag`` (``nullspace/name:latest`` for a bare name) for ``from_template``;
    with no such builtin the caller's own template answers (for ``latest``, its default tag)."""
    name = unique("parent")
    parent = Template.build(Template.from_image(sdk.base_image).run_cmd("echo parent > /p"), f"{name}:v1",
                            **sdk.acme)  # fmt: skip
    Template.assign_tags(f"{name}:v1", ["default"], **sdk.acme)
    for ref in (f"{name}:v1", name):
        entries: list[TemplateBuildLogEntry] = []
        child = Template.build(Template.from_template(ref).run_cmd(f"echo {ref}; cat /p"), unique("child"),
                               on_log_entry=entries.append, **sdk.acme)  # fmt: skip
        assert "parent" in messages(entries, "step")
        child.close()
    with pytest.raises(Exception) as missing:
        Template.build(Template.from_template(f"{name}:nope").run_cmd("true"), unique("child"), **sdk.acme)
    assert getattr(missing.value, "code", None) == "invalid_request" and "not found" in str(missing.value)
    parent.close()
