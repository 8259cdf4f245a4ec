"""`amber doctor`: report what this host lacks for building templates."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import typer

from amber.isolation import IsolationError, ensure_host_rules
from amber.settings import Settings

_MIN_FREE_GIB = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _kvm() -> Check:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    hw = " vmx " in f" {flags} ".replace("\n", " ") or " svm " in f" {flags} ".replace("\n", " ")
    dev = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if hw and dev:
        return Check("kvm", True, "/dev/kvm usable with hardware virtualization", required=False)
    why = "no vmx/svm CPU flags" if not hw else "/dev/kvm missing or not accessible"
    return Check("kvm", False, f"{why}: VMs run under TCG (much slower guest CPU)", required=False)


def _binary(name: str, path: str, package: str) -> Check:
    found = shutil.which(path) or (path if Path(path).exists() else None)
    if not found:
        return Check(name, False, f"{path} not found (apt-get install {package})")
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10).stdout
        version = out.splitlines()[0] if out else "present"
    except (OSError, subprocess.SubprocessError):
        version = "present"
    return Check(name, True, f"{found}: {version}")


def _guest_kernel(settings: Settings) -> Check:
    guest = settings.data_dir / "guest"
    kernels = list(guest.glob("**/vmlinux*")) if guest.exists() else []
    if kernels:
        return Check("kernel", True, f"guest kernel {kernels[0]}")
    return Check("kernel", False, f"no guest kernel under {guest} (run: amber setup-guest)")


def _dockerd() -> Check:
    found = shutil.which("dockerd")
    if not found:
        return Check("dockerd", False, "dockerd not found (apt-get install docker.io); Dockerfile builds need it",
                     required=False)
    return Check("dockerd", True, f"{found} (started by Amber on demand for Dockerfile builds)", required=False)


def _isolation() -> Check:
    try:
        gid = ensure_host_rules()
    except IsolationError as e:
        return Check("isolation", False, f"guests with internet cannot be isolated: {e}")
    return Check("isolation", True, f"nftables table inet amber confines group {gid} (guest network)")


def _disk(settings: Settings) -> Check:
    target = settings.data_dir if settings.data_dir.exists() else Path.cwd()
    free = shutil.disk_usage(target).free / 1024**3
    return Check("disk", free >= _MIN_FREE_GIB, f"{free:.1f} GiB free under {target.resolve()} "
                 f"(want >= {_MIN_FREE_GIB:.0f} GiB)")


def doctor(
    data_dir: Path = typer.Option(None, "--data-dir", envvar="AMBER_DATA_DIR", help="Amber's data directory."),
) -> None:
    """Report what is missing (KVM, QEMU, guest kernel, dockerd, network isolation, disk space). Exit 1 if a
    requirement fails. The isolation check installs the nftables table guests need (idempotent)."""
    settings = Settings()
    if data_dir is not None:
        settings.data_dir = data_dir
    checks = [
        _kvm(),
        _binary("qemu", "qemu-system-x86_64", "qemu-system-x86"),
        _binary("qemu-img", "qemu-img", "qemu-utils"),
        _guest_kernel(settings),
        _dockerd(),
        _isolation(),
        _disk(settings),
    ]
    for check in checks:
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        typer.echo(f"{mark} {check.name:9} {check.detail}")
    if any(not c.ok and c.required for c in checks):
        raise typer.Exit(1)
