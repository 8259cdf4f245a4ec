"""`amber keys create` and `amber doctor` as a user runs them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.support.server import AMBER


def run(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "AMBER_DATA_DIR": str(data_dir)}
    return subprocess.run([*AMBER, *args], env=env, capture_output=True, text=True, timeout=120)


def test_keys_create_prints_only_the_key_and_stores_its_hash(tmp_path: Path) -> None:
    first = run(["keys", "create"], tmp_path)
    second = run(["keys", "create", "--namespace", "team-a"], tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    for out in (first.stdout, second.stdout):
        assert re.fullmatch(r"amber_[A-Za-z0-9_-]{40,}\n", out), out
    engine = create_engine(f"sqlite:///{tmp_path / 'amber.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT k.key_hash, n.slug FROM api_keys k JOIN namespaces n "
                                     "ON n.id = k.namespace_id ORDER BY n.slug")).all()
    finally:
        engine.dispose()
    assert [r[1] for r in rows] == ["default", "team-a"]
    dump = repr(rows) + (tmp_path / "amber.db").read_bytes().decode("latin-1")
    assert first.stdout.strip() not in dump and second.stdout.strip() not in dump
    bad = run(["keys", "create", "--namespace", "Not A Slug"], tmp_path)
    assert bad.returncode == 2 and bad.stdout == "" and "namespace" in bad.stderr
    reserved = run(["keys", "create", "--namespace", "nullspace"], tmp_path)
    assert reserved.returncode == 2 and reserved.stdout == ""


def test_doctor_reports_every_check(tmp_path: Path) -> None:
    result = run(["doctor"], tmp_path)
    lines = result.stdout.splitlines()
    names = [line.split()[1] for line in lines]
    assert names == ["kvm", "qemu", "qemu-img", "kernel", "dockerd", "isolation", "disk"], result.stdout
    isolation = next(line for line in lines if line.split()[1] == "isolation")
    assert isolation.startswith("ok") and "inet amber" in isolation
    assert all(line.split()[0] in ("ok", "warn", "FAIL") for line in lines)
    kernel = next(line for line in lines if line.split()[1] == "kernel")
    assert kernel.startswith("FAIL") and "amber setup-guest" in kernel  # a fresh data dir has no guest kernel
    assert result.returncode == 1
