"""The QEMU implementation of ``amber.vm.driver``: ``microvm`` machines driven over QMP.

- ``driver``: ``QemuDriver`` (the ``Driver``), ``boot`` and ``restore`` through one start path, ``describe``
  (the ``MachineDescription`` a boot would get on this host), ``resolve_accel``
- ``microvm``: ``MicroVM`` (the ``Machine``): agent connection, ``checkpoint_disk``, ``snapshot``,
  ``live_snapshot``, ``close``
- ``argv``: the QEMU and guest-kernel command lines and ``MachineFiles`` (the paths of one QEMU process)
- ``process``: run directories with recorded owners, QEMU spawned with a parent-death signal, ``sweep_stale``
  and ``sweep_snapshot_staging``
- ``host``: host facts (accelerator, TSC, QEMU binary and version); ``qmp``: the QMP client; ``qcow2``: empty
  overlays written directly
"""

from amber.vm.qemu.driver import QemuDriver, boot, resolve_accel, restore
from amber.vm.qemu.microvm import MicroVM
from amber.vm.qemu.process import sweep_snapshot_staging, sweep_stale

__all__ = ["MicroVM", "QemuDriver", "boot", "resolve_accel", "restore", "sweep_snapshot_staging", "sweep_stale"]
