"""Facts about the host that shape the QEMU command line: accelerator, TSC frequency, QEMU version."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

from amber.vm.errors import VMError
from amber.vm.machine import Accel

QEMU_BINARY = "qemu-system-x86_64"
KERNEL_HZ = 250  # CONFIG_HZ of Debian's kernels: lpj = loops per jiffy = TSC kHz * 1000 / HZ


def accel_from_cpuinfo(cpuinfo: str, kvm_device: bool) -> Accel:
    """KVM only with hardware virtualization (vmx/svm flags) and /dev/kvm; TCG otherwise (pure).

    A /dev/kvm without vmx/svm (PVM, nested software KVM) cannot boot stock kernels, so it counts as none.
    """
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return Accel.KVM if kvm_device and ({"vmx", "svm"} & flags) else Accel.TCG


def tsc_khz_from_cpuinfo(cpuinfo: str) -> int:
    m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M)
    if not m:
        raise VMError("cannot read the CPU frequency from /proc/cpuinfo (needed for tsc_early_khz)")
    return int(float(m.group(1)) * 1000)


@functools.cache
def _cpuinfo() -> str:
    return Path("/proc/cpuinfo").read_text()


def detect_accel() -> Accel:
    return accel_from_cpuinfo(_cpuinfo(), Path("/dev/kvm").exists())


def tsc_khz() -> int:
    return tsc_khz_from_cpuinfo(_cpuinfo())


def lpj() -> int:
    return tsc_khz() * 1000 // KERNEL_HZ


@functools.cache
def qemu_binary() -> str:
    path = shutil.which(QEMU_BINARY)
    if not path:
        raise VMError(f"{QEMU_BINARY} is not installed (Debian package qemu-system-x86; run scripts/setup.sh)")
    return path


@functools.cache
def qemu_version() -> str:
    out = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else out.strip()
