"""Snapshot a VM running a service, restore sandboxes from it, and reject bad restores."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from amber.vm import (
    ArtifactError,
    MachineMismatch,
    MemoryBackend,
    MicroVM,
    TemplateArtifact,
    boot,
    restore,
)
from amber.vm.artifact import sha256_file
from tests.vm.conftest import qemu_processes_for
from tests.vm.test_exec import wait_for_port

# The counter is written to a temporary file and renamed into place, so a reader never sees it truncated.
SERVICE = (
    "(i=0; while true; do i=$((i+1)); echo $i > /dev/shm/counter.new; mv /dev/shm/counter.new /dev/shm/counter; "
    "sleep 0.2; done) >/dev/null 2>&1 & "
    "httpd -p 8080 -h /www"
)


@dataclass(frozen=True)
class Template:
    artifact: TemplateArtifact
    counter_at_snapshot: int
    boot_id: str
    checksums: dict[str, str]


def checksums(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def template(busybox_disk: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Template:
    out = tmp_path_factory.mktemp("template") / "artifact"
    with boot(busybox_disk, data_dir=data_dir, memory_mib=256) as vm:
        vm.exec(shell=SERVICE)
        wait_for_port(vm, 8080)
        vm.agent.tcp_probe(8080)
        assert vm.agent.http_probe(8080, "/cgi-bin/counter") == 200
        counter = int(vm.exec(["cat", "/dev/shm/counter"]).stdout)
        boot_id = vm.exec(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.decode().strip()
        artifact = vm.snapshot(out)
        assert not vm.alive() and not vm.run_dir.exists()
    time.sleep(3)  # age the snapshot so a guest clock left unset would be visibly behind
    return Template(artifact, counter, boot_id, checksums(out))


def test_artifact_layout_and_manifest(template: Template) -> None:
    art = TemplateArtifact.load(template.artifact.directory, verify_checksums=True)
    names = set(art.files)
    assert {"vmlinux", "initramfs.cpio.gz", "state.bin", "memory.bin", "machine.json"} <= names
    assert [layer.path.name for layer in art.chain.layers] == ["00-busybox.ext4", "01-disk.qcow2"]
    assert art.description.memory_mib == 256 and art.description.memory_backend == MemoryBackend.FILE
    # Lazy snapshot: only device state is written, guest RAM stays in the (sparse) memory file.
    assert art.files["state.bin"].size < 2 * 1024 * 1024
    assert art.files["memory.bin"].size == 256 * 1024 * 1024


def test_three_parallel_restores(template: Template, data_dir: Path) -> None:
    with ExitStack() as stack, ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(restore, template.artifact.directory, data_dir=data_dir) for _ in range(3)]
        for f in futures:  # every VM that did start is closed by the stack, even if another failed
            if f.exception() is None:
                stack.enter_context(f.result())
        boxes: list[MicroVM] = [f.result() for f in futures]

        assert len({b.pid for b in boxes}) == 3
        randoms, boot_ids = set(), set()
        for box in boxes:
            # The service survived the snapshot: it answers, and its in-memory counter went on from the
            # value it had (not restarted from 1).
            box.agent.tcp_probe(8080)
            assert box.agent.http_probe(8080, "/cgi-bin/counter") == 200
            first = int(box.exec(["cat", "/dev/shm/counter"]).stdout)
            assert template.counter_at_snapshot <= first <= template.counter_at_snapshot + 25
            deadline = time.monotonic() + 30
            while int(box.exec(["cat", "/dev/shm/counter"]).stdout) <= first:
                assert time.monotonic() < deadline, "the counter stopped after restore"
                time.sleep(0.1)
            before = time.time()
            guest_now = int(box.exec(["date", "+%s"]).stdout)
            assert before - 2 <= guest_now <= time.time() + 2, "the guest clock was not set after restore"
            randoms.add(box.exec(["od", "-An", "-tx1", "-N16", "/dev/urandom"]).stdout)
            boot_ids.add(box.exec(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.decode().strip())
        assert len(randoms) == 3, "restored sandboxes share their RNG state"
        assert len(boot_ids) == 3 and template.boot_id not in boot_ids

        barrier = threading.Barrier(3)

        def write_and_look(i: int, box: MicroVM) -> bytes:
            box.exec(shell=f"echo {i} > /root/sandbox-{i}; echo changed > /www/index.html; sync")
            barrier.wait(timeout=60)
            return box.exec(shell="ls /root; cat /www/index.html").stdout

        seen = list(pool.map(write_and_look, range(3), boxes))
        for i, listing in enumerate(seen):
            assert listing == f"sandbox-{i}\nchanged\n".encode()
    assert checksums(template.artifact.directory) == template.checksums
    template.artifact.verify()


def test_restore_with_mismatched_memory_fails_before_qemu_starts(template: Template, data_dir: Path) -> None:
    before = qemu_processes_for(data_dir), sorted((data_dir / "run").glob("vm-*"))
    with pytest.raises(MachineMismatch, match=r"memory_mib: 256 in the artifact, requested 512"):
        restore(template.artifact.directory, data_dir=data_dir, memory_mib=512)
    with pytest.raises(MachineMismatch, match=r"cpus: 1 in the artifact, requested 2"):
        restore(template.artifact.directory, data_dir=data_dir, cpus=2)
    assert (qemu_processes_for(data_dir), sorted((data_dir / "run").glob("vm-*"))) == before


def test_restore_with_a_missing_or_damaged_file_fails_clearly(template: Template, data_dir: Path,
                                                             tmp_path: Path) -> None:
    before = qemu_processes_for(data_dir), sorted((data_dir / "run").glob("vm-*"))
    broken = tmp_path / "broken"
    shutil.copytree(template.artifact.directory, broken, copy_function=os.link)
    (broken / "state.bin").unlink()
    with pytest.raises(ArtifactError, match=r"is missing state.bin"):
        restore(broken, data_dir=data_dir)
    shutil.rmtree(broken)
    shutil.copytree(template.artifact.directory, broken)
    with (broken / "memory.bin").open("r+b") as f:
        f.truncate(128 * 1024 * 1024)
    with pytest.raises(ArtifactError, match=r"memory.bin is 134217728 bytes, the manifest says 268435456"):
        restore(broken, data_dir=data_dir)
    shutil.rmtree(broken)
    shutil.copytree(template.artifact.directory, broken, copy_function=os.link)
    machine = broken / "machine.json"
    edited = json.loads(machine.read_text()) | {"memory_mib": 128}
    machine.unlink()  # a hard link: replace it rather than edit the template's file
    machine.write_text(json.dumps(edited, indent=2) + "\n")
    with pytest.raises(ArtifactError, match=r"machine.json"):
        restore(broken, data_dir=data_dir, memory_mib=128)
    with pytest.raises(ArtifactError, match=r"does not exist"):
        restore(tmp_path / "nothing-here", data_dir=data_dir)
    assert (qemu_processes_for(data_dir), sorted((data_dir / "run").glob("vm-*"))) == before
    assert checksums(template.artifact.directory) == template.checksums


@pytest.fixture()
def ram_vm(busybox_disk: Path, data_dir: Path) -> Iterator[MicroVM]:
    with boot(busybox_disk, data_dir=data_dir, memory_mib=128, memory_backend=MemoryBackend.RAM) as vm:
        yield vm


def test_anonymous_memory_snapshot_carries_ram_in_the_state_file(ram_vm: MicroVM, data_dir: Path,
                                                                  tmp_path: Path) -> None:
    ram_vm.exec(shell="head -c 1000000 /dev/urandom > /dev/shm/blob; sha256sum /dev/shm/blob > /root/sum")
    artifact = ram_vm.snapshot(tmp_path / "ram-artifact")
    assert "memory.bin" not in artifact.files
    assert artifact.files["state.bin"].size > 20 * 1024 * 1024  # every non-zero page of guest RAM
    with restore(artifact.directory, data_dir=data_dir) as box:
        assert box.exec(["sha256sum", "-c", "/root/sum"]).exit_code == 0


def test_a_restored_sandbox_can_be_snapshotted_again(template: Template, data_dir: Path, tmp_path: Path) -> None:
    with restore(template.artifact.directory, data_dir=data_dir) as box:
        box.exec(shell="echo second-generation > /dev/shm/marker; echo disk > /root/marker")
        child = box.snapshot(tmp_path / "child")
    # Its RAM was a private copy of the template's, so this snapshot carries it in the state file.
    assert child.files["state.bin"].size > 10 * 1024 * 1024
    with restore(child.directory, data_dir=data_dir) as grandchild:
        assert grandchild.exec(["cat", "/dev/shm/marker", "/root/marker"]).stdout == b"second-generation\ndisk\n"
        first = int(grandchild.exec(["cat", "/dev/shm/counter"]).stdout)
        assert first >= template.counter_at_snapshot
    assert checksums(template.artifact.directory) == template.checksums


def test_snapshot_to_another_filesystem_copies_sparsely(busybox_disk: Path, data_dir: Path) -> None:
    other_fs = Path(tempfile.mkdtemp(prefix="amber-test-", dir="/dev/shm"))  # tmpfs: no hard links from here
    try:
        with boot(busybox_disk, data_dir=data_dir, memory_mib=128) as vm:
            vm.exec(shell="echo kept > /dev/shm/mark")
            artifact = vm.snapshot(other_fs / "artifact")
        memory = artifact.directory / "memory.bin"
        assert memory.stat().st_size == 128 << 20 and memory.stat().st_blocks * 512 < 100 << 20
        artifact.verify()
        with restore(artifact.directory, data_dir=data_dir) as box:
            assert box.exec(["cat", "/dev/shm/mark"]).stdout == b"kept\n"
    finally:
        shutil.rmtree(other_fs)
