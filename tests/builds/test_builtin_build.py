"""The builtin builder's housekeeping without a VM: debris of a killed debootstrap is removed without ever reaching
through a mount into the host's files, and a data directory without a builtin reads as missing (the server then
registers nothing and still starts)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from amber.builds.builtin import BuiltinMissing, builtin_artifact_dir, load_builtin, register_builtins
from amber.builds.builtin.build import CURRENT, _remove_debris, builtin_root
from amber.host.mounts import mounts_under
from amber.store.database import Database, migrate


def test_debris_is_removed_without_reaching_through_mounts(tmp_path: Path) -> None:
    host = tmp_path / "host-shm"  # stands for the host's /dev/shm that debootstrap bind-mounts into its target
    host.mkdir()
    (host / "precious").write_text("keep me")
    root = tmp_path / "builtin" / "base"
    target = root / "tree-0123456789abcdef.partial" / "dev" / "shm"
    target.mkdir(parents=True)
    (root / ".work-1").mkdir()
    subprocess.run(["mount", "--bind", str(host), str(target)], check=True)
    try:
        assert mounts_under(root) == [target.resolve()]
        _remove_debris(root)
    finally:
        if mounts_under(root):
            subprocess.run(["umount", "-l", str(target)], check=True)
    assert list(root.iterdir()) == []
    assert (host / "precious").read_text() == "keep me"


def test_a_missing_builtin_reads_as_missing(tmp_path: Path) -> None:
    with pytest.raises(BuiltinMissing, match="amber setup-base"):
        load_builtin(tmp_path)
    assert builtin_artifact_dir(tmp_path) is None
    root = builtin_root(tmp_path)
    root.mkdir(parents=True)
    (root / CURRENT).write_text(json.dumps({"format": 1, "artifact": "artifact-gone"}))
    with pytest.raises(BuiltinMissing):
        load_builtin(tmp_path)
    url = f"sqlite:///{tmp_path / 'amber.db'}"
    migrate(url)
    db = Database(url)
    try:
        assert register_builtins(db, tmp_path) == {"base": None}
    finally:
        db.dispose()
