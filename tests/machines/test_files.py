"""Machine files through the unmodified SDK: text and binary, streamed bytes, listing, and the path rules."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from nullspace import Machine
from nullspace.errors import NotFoundError

from tests.machines.conftest import Machines, run

pytestmark = pytest.mark.vm


def test_file_operations(machines: Machines) -> None:
    with Machine.create(template=machines.template, **machines.acme) as machine:
        files = machine.files
        info = files.write("/workspace/notes/a.txt", "héllo\n")
        assert (info.name, info.path, info.size, info.type, info.is_dir) == ("a.txt", "/workspace/notes/a.txt", 7,
                                                                              "file", False)
        assert files.read("/workspace/notes/a.txt") == "héllo\n"
        assert files.read("notes/a.txt") == "héllo\n", "relative paths resolve from /workspace"
        assert files.write("/workspace/bin.dat", b"\x00\x01\xff").size == 3
        assert files.read("/workspace/bin.dat", format="bytes") == b"\x00\x01\xff"
        assert files.exists("/workspace/notes/a.txt") and not files.exists("/workspace/nothing")
        assert files.make_dir("/workspace/deep/er/dir")
        listing = {f.path: f for f in files.list("/workspace", depth=3)}
        assert listing["/workspace/deep"].is_dir and listing["/workspace/deep"].type == "dir"
        assert "/workspace/deep/er/dir" in listing and "/workspace/notes/a.txt" in listing
        assert "/workspace/deep/er" not in {f.path for f in files.list("/workspace", depth=1)}
        moved = files.rename("/workspace/notes/a.txt", "/workspace/notes/b.txt")
        assert moved.path == "/workspace/notes/b.txt" and not files.exists("/workspace/notes/a.txt")
        files.remove("/workspace/deep")
        assert not files.exists("/workspace/deep/er/dir")
        with pytest.raises(NotFoundError):
            files.read("/workspace/missing.txt")
        written = files.write_files([("/workspace/batch/one.txt", "1"), ("/workspace/batch/two.bin", b"22")])
        assert [w.size for w in written] == [1, 2]
        assert run(machine, "cat", ["/workspace/batch/one.txt", "/workspace/batch/two.bin"]).stdout == "122"
        link = run(machine, "ln", ["-s", "/workspace/notes", "/workspace/link"])
        assert link.exit_code == 0
        assert files.info("/workspace/link").type == "symlink"


def test_five_mib_binary_round_trip_is_byte_exact(machines: Machines) -> None:
    data = os.urandom(5 << 20)
    digest = hashlib.sha256(data).hexdigest()
    with Machine.create(template=machines.template, **machines.acme) as machine:
        info = machine.files.write("/workspace/big.bin", io.BytesIO(data))
        assert info.size == len(data)
        guest = run(machine, "sha256sum", ["/workspace/big.bin"]).stdout.split()[0]
        assert guest == digest
        back = machine.files.read("/workspace/big.bin", format="bytes")
        assert isinstance(back, bytes) and hashlib.sha256(back).hexdigest() == digest
        streamed = b"".join(machine.files.read("/workspace/big.bin", format="stream"))  # type: ignore[arg-type]
        assert hashlib.sha256(streamed).hexdigest() == digest


def test_files_as_another_user_and_permissions(machines: Machines) -> None:
    with Machine.create(template=machines.template, **machines.acme) as machine:
        machine.files.write("/workspace/root-only.txt", "secret")
        run(machine, "chmod", ["600", "/workspace/root-only.txt"])
        assert machine.files.info("/workspace/root-only.txt").mode == "0600"
        with pytest.raises(Exception) as denied:
            machine.files.read("/workspace/root-only.txt", user="nobody")
        assert "permission denied" in str(denied.value)
