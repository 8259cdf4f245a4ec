"""Disk chains: boot from immutable layers, checkpoint a running VM's disk into a new layer, snapshot it."""

from __future__ import annotations

from pathlib import Path

import pytest

from amber.vm import DiskChain, VMError, boot, restore
from amber.vm.artifact import sha256_file


def test_checkpoint_disk_turns_the_overlay_into_a_layer_without_reboot(
    busybox_disk: Path, data_dir: Path, tmp_path: Path
) -> None:
    layers = tmp_path / "layers"
    layers.mkdir()
    base_sum = sha256_file(busybox_disk)
    with boot(busybox_disk, data_dir=data_dir, memory_mib=192, overlay=layers / "step1.qcow2") as vm:
        booted_pid = vm.pid
        assert vm.exec(shell="echo one > /root/step1").exit_code == 0
        chain = vm.checkpoint_disk(layers / "step2.qcow2")
        assert [layer.path for layer in chain.layers] == [busybox_disk, layers / "step1.qcow2"]
        step1_sum = sha256_file(layers / "step1.qcow2")

        # The VM keeps running on the new overlay; the finished layer no longer changes.
        assert vm.exec(shell="echo two > /root/step2; rm /root/step1; sync").exit_code == 0
        assert sha256_file(layers / "step1.qcow2") == step1_sum

        # Another VM boots from the cached chain while the first one still runs.
        with boot(chain, data_dir=data_dir, memory_mib=128) as other:
            assert other.exec(["ls", "/root"]).stdout == b"step1\n"
            assert other.exec(["cat", "/root/step1"]).stdout == b"one\n"
            other.exec(shell="echo other > /root/other")
            with pytest.raises(VMError, match="caller-owned overlay"):
                other.checkpoint_disk(tmp_path / "nope.qcow2")

        chain = vm.checkpoint_disk(layers / "step3.qcow2")
        assert [layer.path.name for layer in chain.layers] == ["busybox.ext4", "step1.qcow2", "step2.qcow2"]
        with pytest.raises(VMError, match="already exists"):
            vm.checkpoint_disk(layers / "step2.qcow2")
        assert vm.exec(["ls", "/root"]).stdout == b"step2\n"
        assert vm.pid == booted_pid  # no reboot happened
        artifact = vm.snapshot(tmp_path / "artifact")

    assert [layer.path.name for layer in artifact.chain.layers] == [
        "00-busybox.ext4", "01-step1.qcow2", "02-step2.qcow2", "03-step3.qcow2"]
    assert sha256_file(busybox_disk) == base_sum
    assert sha256_file(layers / "step1.qcow2") == step1_sum
    with restore(artifact.directory, data_dir=data_dir) as box:
        assert box.exec(["cat", "/root/step2"]).stdout == b"two\n"
        assert box.exec(["ls", "/root"]).stdout == b"step2\n"
    artifact.verify()


def test_bad_disks_are_refused_with_clear_errors(busybox_disk: Path, data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DiskChain.of(tmp_path / "missing.ext4")
    existing = tmp_path / "exists.qcow2"
    existing.write_bytes(b"")
    with pytest.raises(VMError, match="already exists"):
        boot(busybox_disk, data_dir=data_dir, overlay=existing)
    assert not list((data_dir / "run").glob("vm-*"))
