"""The managed dockerd: started with its own roots, answers the Engine API, restarted when it dies, stopped by PID."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

from amber.buildkit.daemon import ManagedDockerd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_start_restart_after_death_and_stop(tmp_path: Path) -> None:
    daemon = ManagedDockerd(tmp_path / "dockerd", cache_keep_bytes=512 * 1024**2)

    async def scenario() -> tuple[int, int, dict[str, object]]:
        await daemon.ensure_running()
        first = daemon.pid
        assert first is not None
        async with daemon.client() as api:
            info = (await api.get("/info")).json()
        os.kill(first, signal.SIGKILL)  # the daemon dies under us
        deadline = time.monotonic() + 10
        while _alive(first) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not await daemon.healthy()
        await daemon.ensure_running()
        second = daemon.pid
        assert second is not None and await daemon.healthy()
        await daemon.stop()
        return first, second, info

    try:
        first, second, info = asyncio.run(scenario())
    finally:
        asyncio.run(daemon.stop())
    assert info["Driver"] == "overlay2"
    # dockerd started with BuildKit's cache bounded by its garbage collector (it refuses an invalid config).
    config = json.loads(daemon.layout.config_file.read_text())
    assert config == {"builder": {"gc": {"enabled": True, "defaultKeepStorage": f"{512 * 1024**2}b"}}}
    assert info["DockerRootDir"] == str(daemon.layout.data_root)
    assert first != second and daemon.restarts == 1
    assert not _alive(second) and daemon.pid is None
    assert (daemon.layout.pidfile.exists() is False) or not _alive(int(daemon.layout.pidfile.read_text() or 0))
    assert not daemon.layout.exec_root.exists()
    mounts = Path("/proc/mounts").read_text()
    assert str(daemon.layout.base_dir) not in mounts and str(daemon.layout.exec_root) not in mounts


def test_stale_daemon_from_pidfile_is_replaced(tmp_path: Path) -> None:
    """A dockerd left by an earlier Amber process on the same data root is stopped, then started anew."""
    old = ManagedDockerd(tmp_path / "dockerd")
    new = ManagedDockerd(tmp_path / "dockerd")
    try:
        asyncio.run(old.ensure_running())
        stale = old.pid
        assert stale is not None
        asyncio.run(new.ensure_running())
        assert new.pid is not None and new.pid != stale and not _alive(stale)
    finally:
        asyncio.run(new.stop())
        asyncio.run(old.stop())
    assert new.pid is None


def test_missing_dockerd_is_a_clear_build_failure(tmp_path: Path) -> None:
    from amber.buildkit.build import DockerfileBuildRequest, build_dockerfile_rootfs
    from amber.contract.failures import BuildFailed, FailurePhase
    from amber.contract.logs import LogEvent

    daemon = ManagedDockerd(tmp_path / "dockerd", dockerd=tmp_path / "no-such-dockerd")

    async def emit(event: LogEvent) -> None:
        pass

    async def scenario() -> None:
        await build_dockerfile_rootfs(
            DockerfileBuildRequest(dockerfile="FROM scratch\n"),
            dockerd=daemon,
            target_dir=tmp_path / "tree",
            staging_dir=tmp_path / "staging",
            emit=emit,
            cancel=asyncio.Event(),
        )

    try:
        asyncio.run(scenario())
    except BuildFailed as failure:
        assert failure.code == "internal_error" and failure.phase is FailurePhase.PREPARE
        assert f"dockerd not found at {tmp_path / 'no-such-dockerd'}" in failure.message
    else:
        raise AssertionError("a build without dockerd must fail")
