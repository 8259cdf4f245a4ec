"""The SDK's own CLI (``nullspace machine …``) against Amber, as its ``--help`` describes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.machines.conftest import Machines

pytestmark = pytest.mark.vm

NULLSPACE = str(Path(sys.executable).with_name("nullspace"))


def cli(machines: Machines, *args: str, check: bool = True, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NULLSPACE_API_URL": machines.server.url, "NULLSPACE_API_KEY": machines.acme_key}
    out = subprocess.run([NULLSPACE, *args], env=env, capture_output=True, text=True, timeout=300, check=False,
                         input=stdin)
    if check:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


def test_machine_commands(machines: Machines) -> None:
    created = json.loads(cli(machines, "machine", "create", "--template", machines.template, "--json").stdout)
    mid = created["id"]
    try:
        assert created["status"] == "running"
        ran = cli(machines, "machine", "exec", mid, "--", "sh", "-c", "echo from-cli")
        assert "from-cli" in ran.stdout
        cli(machines, "machine", "file", "write", mid, "/workspace/up.txt", stdin="uploaded by the cli\n")
        assert "uploaded by the cli" in cli(machines, "machine", "file", "read", mid, "/workspace/up.txt").stdout
        listed = cli(machines, "machine", "file", "list", mid, "/workspace").stdout
        assert "up.txt" in listed
        assert mid in cli(machines, "machine", "list").stdout
        cli(machines, "machine", "hibernate", mid)
        assert json.loads(cli(machines, "machine", "get", mid, "--json").stdout)["status"] == "paused"
        cli(machines, "machine", "resume", mid)
        assert json.loads(cli(machines, "machine", "get", mid, "--json").stdout)["status"] == "running"
        assert "uploaded by the cli" in cli(machines, "machine", "exec", mid, "--", "cat", "/workspace/up.txt").stdout
    finally:
        cli(machines, "machine", "kill", mid, check=False)
    assert json.loads(cli(machines, "machine", "get", mid, "--json").stdout)["status"] == "destroyed"
