"""A new data directory is provisioned (issue 12): ``amber serve --data-dir NEW`` builds the guest kernel,
initramfs and agent once, with progress on the terminal, before it accepts builds, so a build right after the
start succeeds; a second start finds the guest and builds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from nullspace import Template

from tests.support.images import push_busybox_image
from tests.support.registry import Registry, free_port
from tests.support.server import AMBER

pytestmark = pytest.mark.vm

_START_TIMEOUT_S = 600.0  # the first start downloads and unpacks a kernel package and compiles the agent


@contextmanager
def serve(data_dir: Path, log: Path) -> Iterator[str]:
    """``amber serve --data-dir DATA_DIR`` exactly as a user types it; stopped by its PID."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMBER_", "NULLSPACE_"))}
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen([*AMBER, "serve", "--data-dir", str(data_dir), "--port", str(port), "--workers", "1"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                httpx.get(url + "/openapi.json", timeout=1.0)
                break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, f"amber serve exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "amber serve did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_key(data_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMBER_", "NULLSPACE_"))}
    env["AMBER_DATA_DIR"] = str(data_dir)
    out = subprocess.run([*AMBER, "keys", "create", "--namespace", "acme"], env=env, capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    return out.stdout.strip()


def test_serve_provisions_a_new_data_dir_then_builds(tmp_path: Path, registry: Registry) -> None:
    data_dir = Path(tempfile.mkdtemp(dir=tmp_path))  # `amber serve --data-dir $(mktemp -d)`
    base = push_busybox_image(registry)
    log = tmp_path / "serve.log"
    with serve(data_dir, log) as url:
        build = Template.build(Template.from_image(base).run_cmd("echo provisioned > /p"), "fresh",
                               api_key=create_key(data_dir), base_url=url)  # fmt: skip
        assert build.status.value == "ready"
        build.close()
    first = log.read_text()
    assert "amber: guest: " in first and "amber: guest ready: kernel " in first, first[-3000:]
    assert (data_dir / "guest" / "guest.json").is_file() and not (data_dir / "guest").is_symlink()

    with serve(data_dir, log):  # idempotent: the second start builds nothing
        pass
    assert log.read_text()[len(first):].count("amber: guest") == 0
