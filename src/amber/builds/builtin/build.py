"""Build a builtin template artifact once into ``<data_dir>/builtin/<name>`` (``amber setup-base``).

Three cached stages, each rebuilt only when its key (``definition.py``) changes:

1. the root tree: ``debootstrap --variant=minbase --include=<packages> <suite>`` from the host's apt mirror, then
   the recipe (``_customise``: hostname and hosts, pip allowed system-wide, no host resolv.conf, apt caches and
   /dev emptied) — ``tree-<key>/`` with ``tree-<key>.ok`` written last;
2. the ext4 root disk made from the tree (``amber.rootfs.ext4``, at least ``disk_mib``) — ``disk-<key>.ext4``,
   renamed into place when complete;
3. the template artifact: the disk booted at the definition's shape (a NIC, no internet), the agent's base env
   set, the workdir created, the warm-up command run, the VM snapshotted (``amber.vm``), ``amber-artifact.json``
   written next to the VM's manifest (``amber.builds.artifact_metadata``, as a build's) — ``artifact-<hash>/``,
   renamed into place when complete.

``current.json`` (written atomically, last) names the current artifact and carries the builtin's catalog facts
(description, tags, ids, definition); only then are superseded trees, disks and artifacts removed. A second
run with the same definition and guest reads ``current.json`` and does nothing. Concurrent runs build once
(``.lock``). Nothing half-built is ever used: an interrupted run leaves only ``*.partial``/``.work-*`` debris,
removed by the next run (unmounting anything debootstrap left mounted first).
Needs root (debootstrap, chroot) and the guest (``amber setup-guest``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.builds.artifact_metadata import (
    ArtifactMetadata,
    ArtifactMetadataError,
    read_artifact_metadata,
    write_artifact_metadata,
)
from amber.builds.builtin.definition import (
    BASE,
    DEFAULT_MIRROR,
    BuiltinDefinition,
    artifact_id,
    build_id,
    mirror_from_apt_sources,
    short,
)
from amber.builds.planning.digests import digest_json
from amber.guest.install import GuestMissing
from amber.host.files import remove
from amber.host.mounts import mounts_under
from amber.oci.errors import RootDiskError
from amber.rootfs.ext4 import make_ext4
from amber.settings import get_settings
from amber.vm import DiskChain, MemoryBackend, QemuDriver, TemplateArtifact, VMError, boot

Progress = Callable[[str], None]
CURRENT = "current.json"
FORMAT = 1  # of current.json
DEBOOTSTRAP_TIMEOUT_SECS = 1800.0
WARM_TIMEOUT_SECS = 300.0
_PER_PACKAGE = ("Retrieving", "Validating", "Extracting", "Unpacking", "Configuring")


class BuiltinError(RuntimeError):
    """A builtin template could not be built; the message names the failing stage."""


class BuiltinMissing(RuntimeError):
    """No usable builtin artifact in the data directory (run ``amber setup-base``); the message says why."""


@dataclass(frozen=True)
class BuiltinArtifact:
    """A built builtin template as the catalog registers it (from ``current.json`` and ``amber-artifact.json``)."""

    name: str
    description: str
    directory: Path  # the template artifact directory (a VM artifact, restorable as is)
    definition_hash: str
    artifact_id: str
    build_id: str
    built_at: float  # seconds since the epoch
    size_bytes: int  # allocated bytes of the artifact directory
    runtime_defaults: dict[str, Any]  # TemplateRuntimeDefaults JSON (env keys only)
    default_tag: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class SetupResult:
    artifact: BuiltinArtifact
    built: bool  # False: it was up to date, nothing ran
    tree_cached: bool  # debootstrap did not run
    disk_cached: bool  # mkfs did not run


def builtin_root(data_dir: Path, name: str = BASE.name) -> Path:
    return data_dir / "builtin" / name


def load_builtin(data_dir: Path, name: str = BASE.name) -> BuiltinArtifact:
    """The current builtin ``name`` of ``data_dir``; ``BuiltinMissing`` when it is absent or unreadable."""
    root = builtin_root(data_dir, name)
    try:
        current = json.loads((root / CURRENT).read_text())
        if current.get("format") != FORMAT:
            raise BuiltinMissing(f"{root / CURRENT} is from another Amber version (run `amber setup-base`)")
        directory = root / str(current["artifact"])
        metadata = read_artifact_metadata(directory)
        return BuiltinArtifact(
            name=name,
            description=str(current["description"]),
            directory=directory,
            definition_hash=str(current["definition_hash"]),
            artifact_id=str(current["artifact_id"]),
            build_id=str(current["build_id"]),
            built_at=float(current["built_at"]),
            size_bytes=int(current["size_bytes"]),
            runtime_defaults=metadata.runtime.to_json(),
            default_tag=str(current["default_tag"]),
            tags=tuple(str(t) for t in current["tags"]),
        )
    except FileNotFoundError as exc:
        raise BuiltinMissing(f"builtin template {name!r} is not built: {exc.filename} is missing "
                             "(run `amber setup-base`)") from None
    except (ArtifactMetadataError, ValueError, KeyError, TypeError) as exc:
        raise BuiltinMissing(f"builtin template {name!r} in {root} is unreadable ({exc}); run `amber setup-base`") \
            from None


def builtin_artifact_dir(data_dir: Path, name: str = BASE.name) -> Path | None:
    """This host's artifact directory of builtin ``name`` (restorable with ``amber.vm.restore``), or None."""
    try:
        return load_builtin(data_dir, name).directory
    except BuiltinMissing:
        return None


def debian_mirror(suite: str) -> str:
    """The Debian mirror of this host's apt sources for ``suite`` (``Settings.debian_mirror`` overrides it)."""
    configured = get_settings().debian_mirror
    if configured:
        return configured
    apt = Path("/etc/apt")
    deb822 = [p.read_text() for p in sorted((apt / "sources.list.d").glob("*.sources"))]
    lists = [p.read_text() for p in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
             if p.is_file()]
    return mirror_from_apt_sources(deb822, lists, suite) or DEFAULT_MIRROR


def ensure_builtin(
    data_dir: Path,
    definition: BuiltinDefinition = BASE,
    *,
    progress: Progress = lambda _m: None,
    rebuild: bool = False,
    accel: str | None = None,
) -> SetupResult:
    """Build whatever of ``definition`` is missing or stale (``rebuild``: everything, debootstrap included) and
    return the current artifact. Idempotent; a second call does nothing."""
    data_dir = data_dir.resolve()
    definition_hash = definition.definition_hash(_guest_fingerprint(data_dir, definition, accel))
    root = builtin_root(data_dir, definition.name)
    if not rebuild and (current := _current(data_dir, definition, definition_hash)) is not None:
        return SetupResult(current, built=False, tree_cached=True, disk_cached=True)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent setups (parallel test sessions) build once, in turn
        if not rebuild and (current := _current(data_dir, definition, definition_hash)) is not None:
            return SetupResult(current, built=False, tree_cached=True, disk_cached=True)
        _remove_debris(root)
        return _build(data_dir, root, definition, definition_hash, progress, rebuild, accel)


def _guest_fingerprint(data_dir: Path, definition: BuiltinDefinition, accel: str | None) -> str:
    """What the artifact depends on besides the definition: the guest and QEMU (the build pipeline's
    fingerprint) and the machine a restore compares with the snapshot's (``MachineDescription`` without the
    kernel command line, whose TSC figures vary), so a driver change a restore would refuse rebuilds it."""
    try:
        driver = QemuDriver(data_dir, accel=accel)
        fingerprint = driver.fingerprint()
        machine = driver.describe(cpus=definition.vcpus, memory_mib=definition.memory_mib, network=True,
                                  memory_backend=MemoryBackend.FILE)  # every VM has a NIC
    except (GuestMissing, VMError) as exc:
        raise BuiltinError(f"the guest is not ready: {exc}") from None
    compared = {k: v for k, v in machine.to_json().items() if k != "kernel_cmdline"}
    return digest_json({"guest": fingerprint, "machine": compared})


def _current(data_dir: Path, definition: BuiltinDefinition, definition_hash: str) -> BuiltinArtifact | None:
    try:
        current = load_builtin(data_dir, definition.name)
        if current.definition_hash != definition_hash:
            return None
        TemplateArtifact.load(current.directory)  # files present with their recorded sizes
    except (BuiltinMissing, VMError):
        return None
    return current


def _build(data_dir: Path, root: Path, definition: BuiltinDefinition, definition_hash: str, progress: Progress,
           rebuild: bool, accel: str | None) -> SetupResult:  # fmt: skip
    tree = root / f"tree-{short(definition.tree_key())}"
    disk = root / f"disk-{short(definition.disk_key())}.ext4"
    if rebuild:
        _remove_tree(tree)
        Path(f"{tree}.ok").unlink(missing_ok=True)
        disk.unlink(missing_ok=True)
    disk_cached = disk.is_file()
    tree_cached = disk_cached or Path(f"{tree}.ok").is_file()
    if not disk_cached:
        if not tree_cached:
            _make_tree(tree, definition, progress)
        else:
            progress(f"using the cached root tree {tree.name}")
        progress(f"making the ext4 root disk (at least {definition.disk_mib} MiB, sparse)")
        try:
            make_ext4(tree, disk, min_size_mib=definition.disk_mib, label=f"nullspace-{definition.name}")
        except RootDiskError as exc:
            raise BuiltinError(f"making the root disk failed: {exc}") from None
    else:
        progress(f"using the cached root disk {disk.name}")
    directory = _make_artifact(data_dir, root, disk, definition, definition_hash, progress, accel)
    size = TemplateArtifact.load(directory).size_bytes()["allocated"]
    record = {
        "format": FORMAT, "name": definition.name, "description": definition.description,
        "definition_hash": definition_hash, "artifact": directory.name,
        "artifact_id": artifact_id(definition, definition_hash), "build_id": build_id(definition, definition_hash),
        "built_at": time.time(), "size_bytes": size, "default_tag": definition.default_tag,
        "tags": list(definition.tags), "tree": tree.name, "disk": disk.name, "definition": definition.to_json(),
    }  # fmt: skip
    _atomic_write(root / CURRENT, json.dumps(record, indent=2) + "\n")
    _remove_superseded(root, keep={tree.name, f"{tree.name}.ok", disk.name, directory.name})
    progress(f"artifact ready: {directory} ({size / 2**20:.0f} MiB allocated)")
    return SetupResult(load_builtin(data_dir, definition.name), built=True, tree_cached=tree_cached,
                       disk_cached=disk_cached)  # fmt: skip


# -- stage 1: the root tree ----------------------------------------------------------------------------------------


def _make_tree(tree: Path, definition: BuiltinDefinition, progress: Progress) -> None:
    partial = Path(f"{tree}.partial")
    _remove_tree(partial)
    _remove_tree(tree)
    mirror = debian_mirror(definition.suite)
    progress(f"debootstrap --variant={definition.variant} {definition.suite} from {mirror} "
             f"(+ {', '.join(definition.packages)})")  # fmt: skip
    argv = ["debootstrap", f"--variant={definition.variant}", f"--include={','.join(definition.packages)}",
            "--components=main", definition.suite, str(partial), mirror]  # fmt: skip
    try:
        _run_debootstrap(argv, partial.with_name(f"{partial.name}.log"), progress)
        progress("customising the tree")
        _customise(partial, definition)
        partial.rename(tree)
        count = len(_chroot(tree, ["dpkg-query", "-W", "-f", "${Package}\n"]).split())
        _atomic_write(Path(f"{tree}.ok"), json.dumps({"tree_key": definition.tree_key(), "mirror": mirror,
                                                      "packages_installed": count}) + "\n")  # fmt: skip
    except BaseException:
        _remove_tree(partial)
        raise
    progress(f"root tree ready: {count} Debian packages")


def _run_debootstrap(argv: list[str], log_path: Path, progress: Progress) -> None:
    """Run debootstrap in its own process group (a timeout or an interrupt kills all of it, by its PID),
    forwarding its stage lines (not the per-package ones) as progress."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "DEBIAN_FRONTEND": "noninteractive"}
    if shutil.which("debootstrap", path=env["PATH"]) is None:
        raise BuiltinError("debootstrap is not installed (run scripts/setup.sh)")
    tail: list[str] = []
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, text=True, start_new_session=True)  # fmt: skip

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            kill()

        watchdog = threading.Timer(DEBOOTSTRAP_TIMEOUT_SECS, on_timeout)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                line = line.rstrip()
                tail = [*tail[-30:], line]
                verb = line[3:].split(" ", 1)[0] if line.startswith("I: ") else ""
                per_package = verb in _PER_PACKAGE and "base system" not in line and "required packages" not in line
                if line.startswith(("I: ", "W: ", "E: ")) and not per_package:
                    progress(f"debootstrap: {line[3:]}")
            code = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                kill()
                proc.wait()
    if timed_out.is_set():
        raise BuiltinError(f"debootstrap ran over {DEBOOTSTRAP_TIMEOUT_SECS:.0f} s (log {log_path})")
    if code != 0:
        raise BuiltinError(f"debootstrap failed (exit {code}; log {log_path}):\n" + "\n".join(tail[-15:]))


def _customise(tree: Path, definition: BuiltinDefinition) -> None:
    """The recipe (``RECIPE`` in ``definition.py``): what a sandbox expects beyond debootstrap's tree."""
    if mounts_under(tree):
        raise BuiltinError(f"debootstrap left file systems mounted under {tree}")
    etc = tree / "etc"
    (etc / "hostname").write_text(definition.hostname + "\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{definition.hostname}\n"
                               "::1\tlocalhost ip6-localhost ip6-loopback\n")  # fmt: skip
    (etc / "resolv.conf").unlink(missing_ok=True)  # the host's copy; the agent writes one when there is a network
    # A sandbox is its user's own machine: `pip install` (the SDK's pip_install step) may install system-wide.
    (etc / "pip.conf").write_text("[global]\nbreak-system-packages = true\nroot-user-action = ignore\n")
    _chroot(tree, ["apt-get", "clean"])
    for cached in (tree / "var/lib/apt/lists").glob("*"):
        if cached.is_file() and cached.name != "lock":
            cached.unlink()
    for binary in (tree / "var/cache/apt").glob("*.bin"):
        binary.unlink()
    dev = tree / "dev"  # the guest mounts devtmpfs here; debootstrap's nodes (or bind targets) are not wanted
    for entry in dev.iterdir() if dev.is_dir() else ():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _chroot(tree: Path, argv: list[str]) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(["chroot", str(tree), *argv], capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuiltinError(f"chroot {' '.join(argv)} failed: {exc}") from None
    if done.returncode != 0:
        raise BuiltinError(f"chroot {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


# -- stage 3: the artifact -----------------------------------------------------------------------------------------


def _make_artifact(data_dir: Path, root: Path, disk: Path, definition: BuiltinDefinition, definition_hash: str,
                   progress: Progress, accel: str | None) -> Path:  # fmt: skip
    work = root / f".work-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    final = root / f"artifact-{short(definition_hash)}"
    env = definition.env_map
    try:
        progress(f"booting the VM: {definition.vcpus} vCPU, {definition.memory_mib} MiB, no internet")
        try:  # a NIC (as every VM), no internet: the warm-up needs none; machines choose theirs at restore
            with boot(DiskChain.of(disk), data_dir=data_dir, cpus=definition.vcpus, memory_mib=definition.memory_mib,
                      accel=accel, hostname=definition.hostname) as vm:
                vm.agent.set_env(env)  # the agent's base env: every exec sees it, also without the template's env
                vm.agent.mkdir(definition.workdir, parents=True)
                progress(f"warming the page cache: {definition.warm}")
                result = vm.agent.exec(shell=definition.warm, env=env, cwd=definition.workdir,
                                       timeout=WARM_TIMEOUT_SECS)  # fmt: skip
                if not result.ok:
                    output = (result.stdout + result.stderr).decode(errors="replace").strip()[-2000:]
                    raise BuiltinError(f"the warm-up command failed (exit {result.exit_code}, signal "
                                       f"{result.signal}, timed out {result.timed_out}): {output}")
                progress("snapshotting the running VM")
                vm.snapshot(work / "artifact")
        except VMError as exc:
            raise BuiltinError(f"the builtin VM failed: {exc}") from None
        # Runtime defaults with the env values (server-side), as a build's finalize phase writes them.
        write_artifact_metadata(work / "artifact", ArtifactMetadata(runtime=definition.runtime_defaults()))
        if final.exists():  # a forced rebuild of the same definition
            shutil.rmtree(final)
        (work / "artifact").rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


# -- housekeeping --------------------------------------------------------------------------------------------------


def _remove_debris(root: Path) -> None:
    """What an interrupted run left: work directories and partial trees (unmounted first)."""
    for entry in root.iterdir():
        if entry.name.startswith(".work-"):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.endswith(".partial"):
            _remove_tree(entry)


def _remove_superseded(root: Path, keep: set[str]) -> None:
    for entry in root.iterdir():
        if entry.name in keep or entry.name in (CURRENT, ".lock") or not entry.name.startswith(
                ("tree-", "disk-", "artifact-")):
            continue
        if entry.is_dir() and not entry.is_symlink():
            _remove_tree(entry)
        else:
            entry.unlink(missing_ok=True)


def _remove_tree(path: Path) -> None:
    """``rm -rf path``, but never through a mount (``amber.host.files.remove`` unmounts first): a killed debootstrap
    leaves the host's /dev entries, /proc and /sys mounted inside its target."""
    problem = remove(path)
    if problem is not None:
        raise BuiltinError(f"cannot remove {path}: {problem}")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
