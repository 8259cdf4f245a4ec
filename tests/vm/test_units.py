"""Pure planning code of the VM runtime: host facts, kernel modules, cpio, QEMU argv, descriptions."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from amber.guest.cpio import CpioEntry, write_newc
from amber.guest.install import (
    GuestSetupError,
    load_guest,
    module_load_order,
    parse_modules_dep,
    resolve_kernel_package,
)
from amber.vm.artifact import copy_sparse
from amber.vm.machine import Accel, DiskChain, DiskFormat, MachineDescription, MemoryBackend
from amber.vm.qemu.argv import MachineFiles, kernel_cmdline, qemu_argv
from amber.vm.qemu.host import accel_from_cpuinfo, tsc_khz_from_cpuinfo
from amber.vm.qemu.qcow2 import write_overlay

CPUINFO = "processor\t: 0\ncpu MHz\t\t: 2596.129\nflags\t\t: fpu vme de pse tsc msr {extra}\n"


def test_accel_needs_hardware_virtualization() -> None:
    assert accel_from_cpuinfo(CPUINFO.format(extra="vmx"), kvm_device=True) == Accel.KVM
    assert accel_from_cpuinfo(CPUINFO.format(extra="svm"), kvm_device=True) == Accel.KVM
    # /dev/kvm without vmx/svm is PVM here: stock kernels cannot boot on it.
    assert accel_from_cpuinfo(CPUINFO.format(extra="hypervisor"), kvm_device=True) == Accel.TCG
    assert accel_from_cpuinfo(CPUINFO.format(extra="vmx"), kvm_device=False) == Accel.TCG


def test_tsc_and_cmdline() -> None:
    assert tsc_khz_from_cpuinfo(CPUINFO.format(extra="")) == 2596129
    line = kernel_cmdline(tsc_khz=2596129, lpj=10384516, network=True)
    assert "tsc_early_khz=2596129" in line and "lpj=10384516" in line and "amber.net=1" in line
    assert "init_on_free=1" not in line.split()  # zeroing all RAM at boot is paid only when asked
    zeroing = kernel_cmdline(tsc_khz=1, lpj=4, network=True, zero_freed_memory=True)
    assert "init_on_free=1" in zeroing.split()  # build-only values do not outlive the pages that held them
    assert "amber.net" not in kernel_cmdline(tsc_khz=1, lpj=4, network=False)


def test_kernel_package_and_module_order() -> None:
    out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
    assert resolve_kernel_package(out) == "linux-image-6.1.0-56-cloud-amd64"
    with pytest.raises(GuestSetupError):
        resolve_kernel_package("linux-image-cloud-amd64\n")
    deps = parse_modules_dep(
        "kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio.ko:\n"
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n"
        "kernel/net/core/failover.ko:\n"
    )
    order = [p.rsplit("/", 1)[1] for p in module_load_order(deps, ("virtio_mmio", "virtio_net"))]
    assert order == ["virtio.ko", "virtio_ring.ko", "virtio_mmio.ko", "failover.ko", "net_failover.ko",
                     "virtio_net.ko"]
    with pytest.raises(GuestSetupError, match="virtio_blk"):
        module_load_order(deps, ("virtio_blk",))


def test_cpio_newc_is_readable_by_cpio(tmp_path: Path) -> None:
    archive = write_newc([CpioEntry.directory("dev"), CpioEntry.char_device("dev/console", 0o600, 5, 1),
                          CpioEntry.file("init", b"#!/bin/sh\n", 0o755)])
    listing = subprocess.run(["cpio", "-itv"], input=archive, capture_output=True, check=True).stdout.decode()
    assert "dev/console" in listing and "init" in listing and listing.count("\n") == 3
    assert listing.splitlines()[1].startswith("crw-------")


def _description(**changes: object) -> MachineDescription:
    base = MachineDescription(qemu_version="7.2.22", accel=Accel.TCG, cpu_model="max", cpus=2, memory_mib=512,
                              memory_backend=MemoryBackend.FILE, network=True, kernel_release="6.1",
                              kernel_sha256="k", initramfs_sha256="i", kernel_cmdline="console=ttyS0")
    return MachineDescription(**{**base.to_json(), **changes})


def test_description_round_trip_and_differences() -> None:
    d = _description()
    assert MachineDescription.from_json(json.loads(json.dumps(d.to_json()))) == d
    assert d.differences(_description(memory_mib=256, cpus=1)) == ["cpus: 2 != 1", "memory_mib: 512 != 256"]
    with pytest.raises(ValueError, match="lacks"):
        MachineDescription.from_json({"accel": "tcg"})


def test_qemu_argv_chain_memory_and_devices(tmp_path: Path) -> None:
    base = tmp_path / "base.ext4"
    base.write_bytes(bytes(4096))
    layer = tmp_path / "layer.qcow2"
    layer.write_bytes(b"QFI\xfb" + bytes(60))
    chain = DiskChain.of(base, layer)
    assert [x.format for x in chain.layers] == [DiskFormat.RAW, DiskFormat.QCOW2]
    files = MachineFiles(kernel=Path("/k"), initramfs=Path("/i"), chain=chain, overlay=tmp_path / "top.qcow2",
                         memory_file=tmp_path / "mem,ory.bin", share_memory=False, incoming=True)
    argv = qemu_argv("qemu", _description(), files)
    joined = " ".join(argv)
    assert argv[:7] == ["qemu", "-M", "microvm", "-accel", "tcg", "-cpu", "max"]
    assert "mem-path=" + str(tmp_path / "mem,,ory.bin") + ",share=off" in joined
    blockdevs = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]
    assert [b["node-name"] for b in blockdevs] == ["d0", "d1", "root"]
    assert blockdevs[0]["read-only"] and blockdevs[1]["read-only"] and blockdevs[1]["backing"] == "d0"
    assert blockdevs[2]["backing"] == "d1" and blockdevs[2]["file"]["filename"] == str(tmp_path / "top.qcow2")
    assert argv[-2:] == ["-incoming", "defer"]
    assert "virtio-net-device,netdev=net0,id=nic0" in argv
    ram = qemu_argv("qemu", _description(memory_backend=MemoryBackend.RAM, network=False),
                    MachineFiles(kernel=Path("/k"), initramfs=Path("/i"), chain=chain, overlay=Path("/o"),
                                 memory_file=None, share_memory=False))
    assert "memory-backend-ram,id=mem,size=512M" in ram and "-netdev" not in ram and "-incoming" not in ram


def test_setup_guest_second_run_does_nothing(guest_data_dir: Path) -> None:
    image = load_guest(guest_data_dir)
    record = json.loads((image.directory / "guest.json").read_text())
    assert record["kernel_package"].startswith("linux-image-") and record["kernel_release"].endswith("cloud-amd64")
    assert {"virtio_mmio", "virtio_blk", "virtio_console", "virtio_net"} <= set(record["modules"])
    assert "virtio_net" in record["network_modules"] and "virtio_blk" not in record["network_modules"]
    before = {p.name: p.stat().st_mtime_ns for p in image.directory.iterdir()}
    done = subprocess.run([sys.executable, "-m", "amber.cli", "setup-guest", "--data-dir", str(guest_data_dir)],
                          capture_output=True, text=True, check=True)
    assert "up to date" in done.stdout
    assert {p.name: p.stat().st_mtime_ns for p in image.directory.iterdir()} == before
    listing = subprocess.run(["cpio", "-it"], input=gzip.decompress(image.initramfs.read_bytes()),
                             capture_output=True, check=True).stdout.decode().split()
    assert "init" in listing and "lib/modules/load.list" in listing
    assert all(f"lib/modules/{m}.ko" in listing for m in record["modules"])
    assert image.vmlinux.read_bytes()[:4] == b"\x7fELF"


def test_qcow2_overlay_is_what_qemu_img_accepts(tmp_path: Path) -> None:
    base = tmp_path / "base.ext4"
    base.write_bytes(bytes(8192))
    for size in (8192, 64 << 20, (3 << 30) + 512, 100 << 30):
        overlay = tmp_path / f"o{size}.qcow2"
        write_overlay(overlay, base, "raw", size)
        check = subprocess.run(["qemu-img", "check", str(overlay)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)],
                                         capture_output=True, text=True, check=True).stdout)
        assert (info["virtual-size"], info["backing-filename"], info["backing-filename-format"]) == (
            size, str(base), "raw")
    with pytest.raises(FileExistsError):
        write_overlay(overlay, base, "raw", 8192)
    with pytest.raises(ValueError):
        write_overlay(tmp_path / "zero.qcow2", base, "raw", 0)


def test_copy_sparse_keeps_content_and_holes(tmp_path: Path) -> None:
    src = tmp_path / "mem.bin"
    with src.open("wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"data" * 5000)
        f.seek(40 << 20)
        f.write(b"more")
    dst = tmp_path / "copy.bin"
    copy_sparse(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_blocks * 512 < 4 << 20  # still sparse
