"""The SDK's own ``nullspace quickstart`` against a fresh server: it creates a machine from the builtin
``nullspace/base`` template, runs a command, writes and reads a file, starts ``python3 -m http.server`` and prints
a preview URL, which a real headless Chromium opens while the machine runs; another namespace's key is refused."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.contract.conftest import data_dir_with_guest, leftover_vms
from tests.machines.test_tenants_and_preview import chromium_dom
from tests.support.server import AmberServer, running_server

pytestmark = pytest.mark.vm

NULLSPACE = str(Path(sys.executable).with_name("nullspace"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AmberServer, str, str]]:
    data_dir = data_dir_with_guest(tmp_path_factory)
    with running_server(data_dir, workers=1) as amber:
        yield amber, amber.create_key("quick"), amber.create_key("someone-else")
    assert not leftover_vms(data_dir)


def cli_env(amber: AmberServer, key: str) -> dict[str, str]:
    return {**os.environ, "NULLSPACE_API_URL": amber.url, "NULLSPACE_API_KEY": key}


def test_quickstart_no_wait_exits_zero(server: tuple[AmberServer, str, str]) -> None:
    amber, key, _ = server
    out = subprocess.run([NULLSPACE, "quickstart", "--no-wait"], env=cli_env(amber, key), capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "hello from nullspace" in out.stdout and "hello from a machine" in out.stdout
    assert re.search(r"Preview URL: http://8080-mch_[0-9a-f]+\.localhost:\d+/", out.stdout), out.stdout


def test_the_quickstart_preview_serves_its_page_in_a_browser(server: tuple[AmberServer, str, str]) -> None:
    amber, key, other_key = server
    master, slave = pty.openpty()  # quickstart waits for Enter only when its stdin is a terminal
    proc = subprocess.Popen([NULLSPACE, "quickstart"], env=cli_env(amber, key), stdin=slave,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.close(slave)
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + 300
        lines = []
        while not url and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Preview URL: "):
                url = line.split(": ", 1)[1].strip()
        assert url, "".join(lines)
        dom = chromium_dom(url)
        assert "Directory listing for /" in dom and "hello.txt" in dom, dom[-2000:]
        parsed = urllib.parse.urlsplit(url)
        with httpx.Client(timeout=30) as http:
            page = f"http://127.0.0.1:{parsed.port}/"
            refused = http.get(page, headers={"Host": parsed.netloc, "Authorization": f"Bearer {other_key}"})
            assert refused.status_code == 404
            assert http.get(page, headers={"Host": parsed.netloc}).status_code == 401
        os.write(master, b"\n")
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
