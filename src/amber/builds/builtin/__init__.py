"""Builtin templates (namespace ``nullspace``): made by Amber itself, visible to every namespace, never deleted.

Public API:

- ``BASE`` (``definition.py``): ``nullspace/base`` — Debian 12 minbase + python3, pip, bash, ca-certificates,
  procps, curl, netbase, iproute2; user root, workdir ``/workspace``, env PATH/HOME/LANG, no start command;
  2 vCPU, 512 MiB (the SDK's default machine shape), a 2 GiB root disk; tags ``latest`` (default) and ``default``
- ``ensure_builtin(data_dir, definition=BASE, progress=, rebuild=, accel=)`` → ``SetupResult``: build what is
  missing or stale (``amber setup-base``, run by ``scripts/setup.sh``)
- ``load_builtin(data_dir, name)`` → ``BuiltinArtifact`` (``BuiltinMissing``); ``builtin_artifact_dir(data_dir,
  name)`` → this host's artifact directory or None
- ``register_builtins(db, data_dir)``: catalog rows for what is built here (``amber serve`` startup)

Guarantees and limits:

- Rebuilt only when the definition or the guest (kernel, initramfs, agent, QEMU version, accelerator) changes;
  a change of runtime settings or shape reuses the cached debootstrap tree and ext4 disk. Package updates in
  the Debian archive are not noticed: ``amber setup-base --rebuild`` starts from scratch.
- The artifact is a template artifact like a build's (``amber-artifact.json`` with ``runtime_defaults`` and
  ``runtime_env``), restorable with ``amber.vm.restore`` and usable as a build's template base.
- A rebuild removes the superseded artifact directory; a server registers the new one at its next start.
- Hosts sharing a database register in turn; the most recently built artifact wins. Its row records the
  registering host's path, so hosts share a data-directory path (as for every artifact).
"""

from amber.builds.builtin.build import (
    BuiltinArtifact,
    BuiltinError,
    BuiltinMissing,
    SetupResult,
    builtin_artifact_dir,
    ensure_builtin,
    load_builtin,
)
from amber.builds.builtin.definition import BASE, BUILTINS, BuiltinDefinition
from amber.builds.builtin.register import register_builtins

__all__ = [
    "BASE",
    "BUILTINS",
    "BuiltinArtifact",
    "BuiltinDefinition",
    "BuiltinError",
    "BuiltinMissing",
    "SetupResult",
    "builtin_artifact_dir",
    "ensure_builtin",
    "load_builtin",
    "register_builtins",
]
