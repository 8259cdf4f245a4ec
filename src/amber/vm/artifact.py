"""The template artifact format: a snapshotted VM on disk, its reader (``TemplateArtifact.load``) and writer
(``write_artifact``).

Layout of an artifact directory::

    vmlinux, initramfs.cpio.gz    the guest kernel and initramfs the VM booted
    disk/NN-<name>                the disk chain, bottom first (the last one is the VM's final overlay)
    memory.bin                    guest RAM (file backend only; sparse)
    state.bin                     QEMU device state (plus all RAM for the RAM backend)
    machine.json                  the exact MachineDescription
    manifest.json                 every file above with size and sha256, and the disk chain order

Guarantees: an artifact is never written after ``snapshot`` returns; restores map ``memory.bin`` private
(copy-on-write) and write only to their own fresh overlay, so any number of restores, in parallel, leave
every artifact file byte-identical. ``load`` checks file presence and sizes (and, with ``verify_checksums``,
the sha256 of every file); a restore (``amber.vm.qemu.driver``) also checks the machine description before QEMU
starts.
Limits: QEMU 7.2 opens ``memory.bin`` read-write even for a private mapping, so the artifact must be on a
writable filesystem; a restore needs the same QEMU version and accelerator as the snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.vm.errors import ArtifactError
from amber.vm.machine import DiskChain, DiskFormat, DiskLayer, MachineDescription, MemoryBackend

MANIFEST_VERSION = 1
Progress = Callable[[str], None]


_ZEROS = bytes(1 << 20)


def sha256_file(path: Path) -> str:
    """sha256 of the file's bytes. Holes of sparse files (guest memory) are hashed as the zeros they read
    as, without reading them."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                data_at = size
            while pos < data_at:  # the hole [pos, data_at)
                n = min(len(_ZEROS), data_at - pos)
                h.update(_ZEROS[:n] if n < len(_ZEROS) else _ZEROS)
                pos += n
            if pos >= size:
                break
            hole_at = os.lseek(fd, pos, os.SEEK_HOLE)
            os.lseek(fd, pos, os.SEEK_SET)
            while pos < hole_at:
                chunk = f.read(min(1 << 20, hole_at - pos))
                if not chunk:
                    raise ArtifactError(f"{path} shrank while being checksummed")
                h.update(chunk)
                pos += len(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ArtifactFile:
    size: int
    sha256: str


@dataclass(frozen=True)
class TemplateArtifact:
    """A loaded, structurally checked artifact directory (see the module docstring for its layout)."""

    directory: Path
    description: MachineDescription
    chain: DiskChain
    files: dict[str, ArtifactFile]
    snapshot_seconds: float
    created: float

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinux"

    @property
    def initramfs(self) -> Path:
        return self.directory / "initramfs.cpio.gz"

    @property
    def state(self) -> Path:
        return self.directory / "state.bin"

    @property
    def memory(self) -> Path | None:
        return self.directory / "memory.bin" if self.description.memory_backend == MemoryBackend.FILE else None

    def manifest_sha256(self) -> str:
        """sha256 of ``manifest.json``, which lists every file's checksum: names this exact artifact content."""
        return sha256_file(self.directory / "manifest.json")

    def checksums(self) -> dict[Path, str]:
        """sha256 of every file of the artifact by path (as recorded in its manifest)."""
        return {self.directory / name: f.sha256 for name, f in self.files.items()}

    def size_bytes(self) -> dict[str, int]:
        """Apparent and allocated bytes of the whole artifact, and of state and memory files."""
        allocated = sum((self.directory / n).stat().st_blocks * 512 for n in self.files)
        out = {"apparent": sum(f.size for f in self.files.values()), "allocated": allocated,
               "state": self.files["state.bin"].size}
        if "memory.bin" in self.files:
            out["memory_allocated"] = (self.directory / "memory.bin").stat().st_blocks * 512
        return out

    def verify(self) -> None:
        """Recompute every checksum; raise ``ArtifactError`` naming the first file that differs."""
        for name, expected in self.files.items():
            actual = sha256_file(self.directory / name)
            if actual != expected.sha256:
                raise ArtifactError(f"template artifact {self.directory}: {name} checksum mismatch "
                                    f"(manifest {expected.sha256[:16]}…, file {actual[:16]}…)")

    @classmethod
    def load(cls, directory: Path, *, verify_checksums: bool = False) -> TemplateArtifact:
        """Read the manifest and check every listed file exists with its recorded size."""
        directory = directory.resolve()
        manifest_path = directory / "manifest.json"
        if not directory.is_dir():
            raise ArtifactError(f"template artifact {directory} does not exist")
        try:
            manifest = json.loads(manifest_path.read_text())
            files = {name: ArtifactFile(int(v["size"]), str(v["sha256"])) for name, v in manifest["files"].items()}
            disk = [(str(d["path"]), DiskFormat(d["format"])) for d in manifest["disk"]]
        except FileNotFoundError:
            raise ArtifactError(f"template artifact {directory} is missing manifest.json") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ArtifactError(f"template artifact {directory}: unreadable manifest.json: {e}") from None
        if manifest.get("version") != MANIFEST_VERSION:
            raise ArtifactError(f"template artifact {directory}: unsupported manifest version "
                                f"{manifest.get('version')!r}")
        if "machine.json" not in files or "state.bin" not in files:
            raise ArtifactError(f"template artifact {directory}: the manifest lists no machine.json or state.bin")
        for name, info in files.items():
            path = directory / name
            if not path.is_file():
                raise ArtifactError(f"template artifact {directory} is missing {name}")
            size = path.stat().st_size
            if size != info.size:
                raise ArtifactError(f"template artifact {directory}: {name} is {size} bytes, "
                                    f"the manifest says {info.size}")
        if sha256_file(directory / "machine.json") != files["machine.json"].sha256:
            raise ArtifactError(f"template artifact {directory}: machine.json does not match the manifest")
        try:
            description = MachineDescription.from_json(json.loads((directory / "machine.json").read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"template artifact {directory}: unreadable machine.json: {e}") from None
        for path, _ in disk:
            if path not in files:
                raise ArtifactError(f"template artifact {directory}: disk layer {path} is not in the manifest")
        chain = DiskChain(tuple(DiskLayer(directory / path, fmt) for path, fmt in disk))
        artifact = cls(directory, description, chain, files, float(manifest.get("snapshot_seconds", 0)),
                       float(manifest.get("created", 0)))
        if verify_checksums:
            artifact.verify()
        return artifact


def _place(src: Path, dst: Path, *, move: bool) -> None:
    """Move, hard-link (same filesystem) or, across filesystems, copy ``src`` to ``dst`` keeping holes."""
    try:
        if move:
            os.replace(src, dst)
        else:
            os.link(src, dst)
        return
    except OSError:
        pass
    copy_sparse(src, dst)
    if move:
        src.unlink()


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy only the data extents of ``src`` (guest memory is mostly holes); the copy has the same size."""
    with src.open("rb") as fin, dst.open("wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError:  # only a hole is left
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            while start < end:  # pread/pwrite: copy_file_range refuses most cross-filesystem pairs (EXDEV)
                chunk = os.pread(fin.fileno(), min(1 << 20, end - start), start)
                if not chunk:
                    raise ArtifactError(f"copying {src} to {dst} stopped at byte {start}")
                os.pwrite(fout.fileno(), chunk, start)
                start += len(chunk)
            pos = end
        fout.truncate(size)


FALLOCATE = "/usr/bin/fallocate"


def dig_holes(path: Path) -> None:
    """Turn every all-zero block of ``path`` back into a hole (``fallocate --dig-holes``; contents unchanged).
    The guest zeroes every page it frees (``init_on_free=1``), which allocates the whole memory file; pages that
    are zero again need no disk and no reading."""
    try:
        subprocess.run([FALLOCATE, "--dig-holes", str(path)], check=True, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise ArtifactError(f"cannot make {path.name} sparse: {e}") from None


def write_artifact(
    staging: Path,
    out_dir: Path,
    *,
    description: MachineDescription,
    kernel: Path,
    initramfs: Path,
    memory_file: Path | None,
    memory_shared: bool,
    chain: DiskChain,
    overlay: Path,
    run_dir: Path | None,
    snapshot_seconds: float,
    progress: Progress | None = None,
    known_sha256: Mapping[Path, str] | None = None,
    sparsify_memory: bool = False,
) -> TemplateArtifact:
    """Assemble a VM's files in ``staging`` (which already holds state.bin), then rename it to ``out_dir``:
    its ``kernel`` and ``initramfs``, ``memory_file`` (``memory_shared``: the guest wrote to it, so a checksum
    known from before does not hold), the ``chain`` and the VM's ``overlay`` on top.
    Files from ``run_dir`` are moved (a VM that keeps running passes None: nothing is moved); everything else is
    hard-linked or copied. ``known_sha256`` = checksums of source files already known (the layers and memory of
    the artifact a VM was restored from: never written since), which are not read again. ``sparsify_memory``: the
guest zeroed the pages it freed (``init_on_free``), so the memory file's zero blocks are dug back into holes
(~0.1 s per 512 MiB; a guest that never zeroes freed pages leaves few zero blocks allocated)."""
    _place(kernel, staging / "vmlinux", move=False)
    _place(initramfs, staging / "initramfs.cpio.gz", move=False)
    (staging / "disk").mkdir()
    disk: list[dict[str, str]] = []
    layers = [*chain.layers, DiskLayer(overlay, DiskFormat.QCOW2)]
    # The kernel and initramfs were checksummed when `amber setup-guest` built them (and are replaced, never
    # rewritten, so a hard link keeps that content).
    known = {"vmlinux": description.kernel_sha256, "initramfs.cpio.gz": description.initramfs_sha256}
    for i, layer in enumerate(layers):
        name = f"disk/{i:02d}-{layer.path.name}"
        if known_sha256 and layer.path in known_sha256:
            known[name] = known_sha256[layer.path]
        _place(layer.path, staging / name, move=layer.path.parent == run_dir)
        disk.append({"path": name, "format": str(layer.format)})
    if memory_file is not None:
        if sparsify_memory and run_dir is not None and memory_file.parent == run_dir:
            dig_holes(memory_file)
        if known_sha256 and memory_file in known_sha256 and not memory_shared:
            known["memory.bin"] = known_sha256[memory_file]
        _place(memory_file, staging / "memory.bin", move=memory_file.parent == run_dir)
    (staging / "machine.json").write_text(json.dumps(description.to_json(), indent=2) + "\n")
    if progress:
        progress("checksumming the artifact")
    listed = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "created": time.time(),
        "snapshot_seconds": snapshot_seconds,
        "disk": disk,
        "files": {n: {"size": (staging / n).stat().st_size, "sha256": known.get(n) or sha256_file(staging / n)}
                  for n in listed},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    # Read-only and private from now on (root still may write, hence the overlay-only discipline).
    for n in [*listed, "manifest.json"]:
        with contextlib.suppress(OSError):
            os.chmod(staging / n, 0o400 if n != "memory.bin" else 0o600)
    os.rename(staging, out_dir)
    return TemplateArtifact.load(out_dir)
