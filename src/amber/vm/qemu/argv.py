"""The QEMU command line of a machine (pure): the guest kernel's command line, the paths of one QEMU process
(``MachineFiles``) and ``qemu_argv``, which turns a ``MachineDescription`` and its files into argv, so a restore
with the same description gets the same machine by construction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.vm.machine import DiskChain, DiskFormat, MachineDescription, MemoryBackend

AGENT_PORT_NAME = "amber.agent"


def kernel_cmdline(*, tsc_khz: int, lpj: int, network: bool, hostname: str | None = None,
                   zero_freed_memory: bool = False) -> str:
    """The guest kernel command line. ``tsc_early_khz``/``lpj`` skip TSC calibration, which hangs about
    one TCG boot in five; ``amber.*`` keys are read by the agent (no hostname: the image's /etc/hostname,
    else "amber"); ``zero_freed_memory`` adds ``init_on_free=1``."""
    # tsc=reliable: under TCG the clocksource watchdog otherwise declares the TSC unstable and the guest
    # falls back to the 4 ms jiffies clocksource. init_on_free=1: freed pages are zeroed, so what a finished
    # command held in memory (build-only env values) is not in the snapshot's memory; it also zeroes all RAM
    # once at boot (~2.5 s per 512 MiB under TCG, ~50 ms per GiB with KVM), hence only when asked.
    parts = ["console=ttyS0", "panic=-1", "quiet", f"tsc_early_khz={tsc_khz}", f"lpj={lpj}", "tsc=reliable",
             *(["init_on_free=1"] if zero_freed_memory else []), f"amber.port={AGENT_PORT_NAME}"]
    if hostname:
        if not hostname.replace("-", "").replace(".", "").isalnum() or len(hostname) > 64:
            raise ValueError(f"hostname {hostname!r} is not a valid host name")
        parts.append(f"amber.hostname={hostname}")
    if network:
        parts.append("amber.net=1")
    return " ".join(parts)


@dataclass(frozen=True)
class MachineFiles:
    """The paths of one QEMU process. Sockets, pidfile and log are relative to the run directory (QEMU's
    cwd), which keeps unix socket paths short whatever the data directory."""

    kernel: Path
    initramfs: Path
    chain: DiskChain
    overlay: Path  # the only writable disk file
    memory_file: Path | None  # MemoryBackend.FILE only
    share_memory: bool  # True: guest writes reach memory_file (template VM); False: private copy-on-write
    incoming: bool = False  # start paused, waiting for migrate-incoming
    qmp_socket: str = "qmp.sock"
    agent_socket: str = "agent.sock"
    serial_log: str = "serial.log"
    pidfile: str = "qemu.pid"


def _blockdev(spec: dict[str, Any]) -> list[str]:
    return ["-blockdev", json.dumps(spec, separators=(",", ":"))]


def disk_args(chain: DiskChain, overlay: Path) -> list[str]:
    """-blockdev nodes d0..dN for the read-only chain and node ``root`` for the writable overlay."""
    args: list[str] = []
    below: str | None = None
    for i, layer in enumerate(chain.layers):
        node: dict[str, Any] = {
            "driver": str(layer.format),
            "node-name": f"d{i}",
            "read-only": True,
            "file": {"driver": "file", "filename": str(layer.path), "read-only": True},
        }
        if layer.format == DiskFormat.QCOW2:
            node["backing"] = below  # None → JSON null: no backing, whatever the header says
        args += _blockdev(node)
        below = f"d{i}"
    args += _blockdev({
        "driver": "qcow2",
        "node-name": "root",
        "file": {"driver": "file", "filename": str(overlay)},
        "backing": below,
    })
    return args


def qemu_argv(qemu: str, desc: MachineDescription, files: MachineFiles) -> list[str]:
    """The full QEMU command line (pure). Device order and ids are fixed: they are part of the machine."""
    argv = [
        qemu, "-M", "microvm", "-accel", str(desc.accel), "-cpu", desc.cpu_model,
        "-smp", str(desc.cpus), "-m", f"{desc.memory_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(files.kernel), "-initrd", str(files.initramfs), "-append", desc.kernel_cmdline,
        "-chardev", f"file,id=ser0,path={files.serial_log}", "-serial", "chardev:ser0",
        "-qmp", f"unix:{files.qmp_socket},server=on,wait=off",
        "-pidfile", files.pidfile,
    ]
    if desc.memory_backend == MemoryBackend.FILE:
        if files.memory_file is None:
            raise ValueError("a file-backed machine needs a memory file")
        share = "on" if files.share_memory else "off"
        argv += ["-object", f"memory-backend-file,id=mem,size={desc.memory_mib}M,"
                            f"mem-path={_escape(str(files.memory_file))},share={share}"]
    else:
        argv += ["-object", f"memory-backend-ram,id=mem,size={desc.memory_mib}M"]
    argv += ["-machine", "memory-backend=mem"]
    argv += disk_args(files.chain, files.overlay)
    argv += ["-device", "virtio-blk-device,drive=root,id=disk0"]
    argv += [
        "-device", "virtio-serial-device,id=serial0",
        "-chardev", f"socket,id=agent,path={files.agent_socket},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME},id=port0",
    ]
    if desc.network:
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0,id=nic0"]
    if files.incoming:
        argv += ["-incoming", "defer"]
    return argv


def _escape(value: str) -> str:
    """QEMU option values escape a comma by doubling it."""
    return value.replace(",", ",,")
