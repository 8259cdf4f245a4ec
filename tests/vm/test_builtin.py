"""The builtin template ``nullspace/base`` as ``amber setup-base`` builds it: the artifact restores with python3,
bash, ps and /workspace working; setup is idempotent; a changed definition rebuilds from the cached disk (no
debootstrap) and removes what it superseded."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from amber.builds.builtin import BASE, BuiltinArtifact, ensure_builtin, load_builtin
from amber.builds.builtin.build import CURRENT, builtin_root
from amber.vm import TemplateArtifact, restore

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def base(guest_data_dir: Path) -> BuiltinArtifact:
    """The repository's builtin (built by `make setup`; built here if missing)."""
    return ensure_builtin(guest_data_dir).artifact


def test_the_artifact_restores_with_python_bash_ps_and_workspace(base: BuiltinArtifact, data_dir: Path) -> None:
    artifact = TemplateArtifact.load(base.directory)
    assert (artifact.description.cpus, artifact.description.memory_mib) == (BASE.vcpus, BASE.memory_mib)
    with restore(artifact, data_dir=data_dir) as vm:
        # No env passed: the agent's base env is the template's runtime env.
        result = vm.exec(shell="python3 --version && echo $LANG $HOME && bash -c 'echo bash $BASH_VERSION' "
                               "&& ps -e -o comm= && pwd", cwd="/workspace")  # fmt: skip
        assert result.ok, result.stderr
        lines = result.stdout.decode().splitlines()
        assert lines[0].startswith("Python 3.11.")
        assert lines[1] == "C.UTF-8 /root"
        assert lines[2].startswith("bash 5.")
        assert "ps" in lines[3:-1] and lines[-1] == "/workspace"
        served = vm.exec(shell="python3 -c 'import ssl, http.server, json; print(ssl.OPENSSL_VERSION)' && "
                               "pip --version && curl --version | head -1 && ip -V && "
                               "echo hi > /workspace/hello.txt && cat /workspace/hello.txt")  # fmt: skip
        assert served.ok, served.stderr
        out = served.stdout.decode()
        assert "OpenSSL" in out and "pip " in out and "curl " in out and out.endswith("hi\n")
        assert vm.exec(["test", "-s", "/etc/ssl/certs/ca-certificates.crt"]).ok
        assert vm.exec(["hostname"]).stdout.decode().strip() == BASE.hostname


def test_setup_is_idempotent(base: BuiltinArtifact, guest_data_dir: Path) -> None:
    current = builtin_root(guest_data_dir) / CURRENT
    before = current.stat().st_mtime_ns
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMBER_")}
    done = subprocess.run([sys.executable, "-m", "amber.cli", "setup-base", "--data-dir", str(guest_data_dir)],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout and base.artifact_id in done.stdout
    assert current.stat().st_mtime_ns == before
    assert load_builtin(guest_data_dir).directory == base.directory


def test_a_changed_definition_rebuilds_from_the_cached_disk(base: BuiltinArtifact, data_dir: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    # A data directory holding (hard links of) the repository's builtin: its disk, artifact and current.json.
    work = tmp_path / "data"
    work.mkdir()
    (work / "guest").symlink_to(data_dir / "guest")
    source, root = base.directory.parent, builtin_root(work)
    root.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(base.directory), str(root / base.directory.name)], check=True)
    disk = next(source.glob("disk-*.ext4"))
    os.link(disk, root / disk.name)
    (root / CURRENT).write_text((source / CURRENT).read_text())
    messages: list[str] = []

    unchanged = ensure_builtin(work, progress=messages.append)
    assert not unchanged.built and unchanged.artifact.artifact_id == base.artifact_id and messages == []

    changed = replace(BASE, env=(*BASE.env, ("AMBER_BUILTIN_TEST", "rebuilt")))
    result = ensure_builtin(work, changed, progress=messages.append)
    assert result.built and result.disk_cached and result.tree_cached
    assert not any("debootstrap" in m for m in messages)
    assert result.artifact.artifact_id != base.artifact_id
    assert "AMBER_BUILTIN_TEST" in result.artifact.runtime_defaults["default_env_keys"]
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted(
        [CURRENT, disk.name, result.artifact.directory.name])  # the superseded artifact is gone
    assert base.directory.is_dir()  # ...from this data directory only
    assert not ensure_builtin(work, changed).built
    with restore(result.artifact.directory, data_dir=work) as vm:
        assert vm.exec(shell="echo $AMBER_BUILTIN_TEST").stdout == b"rebuilt\n"
