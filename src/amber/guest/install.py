"""Build the guest kernel, initramfs and agent once into ``<data_dir>/guest`` (``amber setup-guest``).

Everything comes from Debian's packages on this host: the kernel is ``linux-image-cloud-amd64``'s current
dependency, fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (never installed), its
LZ4/XZ/gzip/zstd payload turned into an uncompressed PVH ``vmlinux``; the agent is compiled from
``agent.c`` with the host's gcc as a static binary; the initramfs holds the agent as ``/init`` plus the
virtio modules it loads. ``guest.json`` records versions and checksums. A second run with the same agent
source does nothing; a changed agent source rebuilds only the agent and the initramfs.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from amber.guest.cpio import CpioEntry, write_newc

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
# Drivers the guest needs on QEMU microvm (virtio-mmio): root disk, agent port, optional network.
GUEST_MODULES = ("virtio_mmio", "virtio_blk", "virtio_console")
NETWORK_MODULES = ("virtio_net",)  # loaded only when the VM has a network (amber.net=1)
AGENT_CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11")
FORMAT = 3  # bump when the layout of <data_dir>/guest changes


class GuestSetupError(RuntimeError):
    """The guest kernel, initramfs or agent could not be built; the message names the failing step."""


class GuestMissing(RuntimeError):
    """The guest files are absent or incomplete: run ``amber setup-guest``."""


@dataclass(frozen=True)
class GuestImage:
    """The files a VM boots from plus what they were built from (``guest.json``)."""

    directory: Path
    kernel_package: str
    kernel_version: str  # Debian package version
    kernel_release: str  # uname -r inside the guest
    modules: tuple[str, ...]  # load order
    network_modules: tuple[str, ...]  # the tail of ``modules`` only a VM with a network loads
    agent_source_sha256: str
    vmlinux_sha256: str
    initramfs_sha256: str
    agent_sha256: str
    gcc_version: str

    @property
    def vmlinux(self) -> Path:
        return self.directory / "vmlinux"

    @property
    def initramfs(self) -> Path:
        return self.directory / "initramfs.cpio.gz"

    @property
    def agent(self) -> Path:
        return self.directory / "amber-agent"


Progress = Callable[[str], None]


def guest_dir(data_dir: Path) -> Path:
    return data_dir / "guest"


def agent_source() -> bytes:
    """The C source of the agent shipped with this package."""
    return resources.files("amber.guest").joinpath("agent.c").read_bytes()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_guest(data_dir: Path) -> GuestImage:
    """Read ``guest.json``; raise ``GuestMissing`` (naming the command to run) if anything is absent."""
    d = guest_dir(data_dir)
    record = d / "guest.json"
    try:
        raw = json.loads(record.read_text())
    except FileNotFoundError:
        raise GuestMissing(f"guest kernel not built: {record} is missing (run `amber setup-guest`)") from None
    if raw.pop("format", None) != FORMAT:
        raise GuestMissing(f"{record} is from another Amber version (run `amber setup-guest`)")
    raw["modules"] = tuple(raw["modules"])
    raw["network_modules"] = tuple(raw["network_modules"])
    image = GuestImage(directory=d, **raw)
    for p in (image.vmlinux, image.initramfs, image.agent):
        if not p.exists():
            raise GuestMissing(f"guest file {p} is missing (run `amber setup-guest`)")
    return image


def ensure_guest(data_dir: Path, progress: Progress = lambda _m: None) -> tuple[GuestImage, bool]:
    """Build whatever is missing or stale; return the image and whether anything was built.

    Idempotent and safe to interrupt: files are written under temporary names and renamed into place, and
    ``guest.json`` is written last.
    """
    d = guest_dir(data_dir)
    source = agent_source()
    source_sha = hashlib.sha256(source).hexdigest()
    current = _current(data_dir)
    if current is not None and current.agent_source_sha256 == source_sha:
        return current, False
    d.mkdir(parents=True, exist_ok=True)
    with (d / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent setups (parallel test sessions) build once, in turn
        current = _current(data_dir)
        if current is not None and current.agent_source_sha256 == source_sha:
            return current, False
        return _build(d, source, source_sha, current, progress), True


def _current(data_dir: Path) -> GuestImage | None:
    try:
        return load_guest(data_dir)
    except (GuestMissing, KeyError, TypeError, ValueError):
        return None


def _build(d: Path, source: bytes, source_sha: str, current: GuestImage | None, progress: Progress) -> GuestImage:
    kernel = _kernel_from_record(current) if current else None
    if kernel is None or not (d / "modules").is_dir():
        kernel = _install_kernel(d, progress)
    progress("compiling the guest agent")
    gcc_version = _build_agent(source, d / "amber-agent")
    progress("packing the initramfs")
    _build_initramfs(d / "amber-agent", d / "modules", kernel.modules, kernel.network_modules,
                     d / "initramfs.cpio.gz")
    image = GuestImage(
        directory=d,
        kernel_package=kernel.package,
        kernel_version=kernel.version,
        kernel_release=kernel.release,
        modules=kernel.modules,
        network_modules=kernel.network_modules,
        agent_source_sha256=source_sha,
        vmlinux_sha256=sha256_file(d / "vmlinux"),
        initramfs_sha256=sha256_file(d / "initramfs.cpio.gz"),
        agent_sha256=sha256_file(d / "amber-agent"),
        gcc_version=gcc_version,
    )
    record = {"format": FORMAT, **{k: v for k, v in asdict(image).items() if k != "directory"}}
    record["modules"] = list(image.modules)
    record["network_modules"] = list(image.network_modules)
    _atomic_write(d / "guest.json", json.dumps(record, indent=2).encode() + b"\n")
    return image


@dataclass(frozen=True)
class _Kernel:
    package: str
    version: str
    release: str
    modules: tuple[str, ...]
    network_modules: tuple[str, ...]


def _kernel_from_record(image: GuestImage) -> _Kernel | None:
    if not image.vmlinux.exists():
        return None
    return _Kernel(image.kernel_package, image.kernel_version, image.kernel_release, image.modules,
                   image.network_modules)


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    # depmod lives in /usr/sbin, which a non-login PATH may lack.
    tool = shutil.which(argv[0]) or shutil.which(argv[0], path="/usr/sbin:/sbin") or argv[0]
    try:
        done = subprocess.run([tool, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise GuestSetupError(f"{what}: {argv[0]} is not installed (run scripts/setup.sh)") from None
    if done.returncode != 0:
        raise GuestSetupError(f"{what} failed ({' '.join(argv)}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def resolve_kernel_package(depends_output: str) -> str:
    """Pick the versioned image package out of ``apt-cache depends linux-image-cloud-amd64`` (pure)."""
    for line in depends_output.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+-cloud-amd64)\s*$", line)
        if m:
            return m.group(1)
    raise GuestSetupError(f"apt-cache depends {KERNEL_METAPACKAGE} names no linux-image-*-cloud-amd64 package")


def _install_kernel(d: Path, progress: Progress) -> _Kernel:
    try:
        depends = _run(["apt-cache", "depends", KERNEL_METAPACKAGE], "apt-cache depends")
        package = resolve_kernel_package(depends)
    except GuestSetupError:
        progress("refreshing the apt package lists")
        _run(["apt-get", "update", "-q"], "apt-get update")
        package = resolve_kernel_package(_run(["apt-cache", "depends", KERNEL_METAPACKAGE], "apt-cache depends"))
    show = _run(["apt-cache", "show", "--no-all-versions", package], "apt-cache show")
    version = next((ln.split(":", 1)[1].strip() for ln in show.splitlines() if ln.startswith("Version:")), "")
    with tempfile.TemporaryDirectory(prefix="amber-kernel-", dir=d) as tmp:
        work = Path(tmp)
        progress(f"downloading {package} {version}")
        _run(["apt-get", "download", "-q", package], "apt-get download", cwd=work)
        debs = list(work.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise GuestSetupError(f"apt-get download {package} produced {len(debs)} .deb files")
        progress(f"unpacking {debs[0].name}")
        root = work / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)], "dpkg-deb -x")
        releases = [p.name for p in (root / "lib" / "modules").iterdir()]
        if len(releases) != 1:
            raise GuestSetupError(f"{package} ships modules for {releases}, expected exactly one kernel release")
        release = releases[0]
        _run(["depmod", "-b", str(root), release], "depmod")  # the .deb ships no modules.dep
        moddir = root / "lib" / "modules" / release
        deps = parse_modules_dep((moddir / "modules.dep").read_text())
        core = module_load_order(deps, GUEST_MODULES)
        order = core + [m for m in module_load_order(deps, GUEST_MODULES + NETWORK_MODULES) if m not in core]
        staged = d / "modules.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        names = []
        for rel in order:
            name = module_name(rel)
            (staged / f"{name}.ko").write_bytes(_decompress_module(moddir / rel))
            names.append(name)
        progress("extracting the uncompressed kernel (vmlinux)")
        vmlinux = extract_vmlinux((root / "boot" / f"vmlinuz-{release}").read_bytes(), work)
        _atomic_write(d / "vmlinux", vmlinux)
        shutil.rmtree(d / "modules", ignore_errors=True)
        staged.rename(d / "modules")
    network = tuple(module_name(m) for m in order[len(core):])
    return _Kernel(package, version, release, tuple(names), network)


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """``modules.dep`` → {module path: [dependency paths]} (pure)."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" in line:
            mod, rest = line.split(":", 1)
            deps[mod.strip()] = rest.split()
    return deps


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base).replace("-", "_")


def module_load_order(deps: dict[str, list[str]], wanted: tuple[str, ...]) -> list[str]:
    """Module paths for ``wanted`` and their dependencies, each after everything it needs (pure)."""
    by_name = {module_name(p): p for p in deps}
    order: list[str] = []

    def visit(path: str, stack: tuple[str, ...]) -> None:
        if path in order:
            return
        if path in stack:
            raise GuestSetupError(f"module dependency cycle: {' -> '.join((*stack, path))}")
        for dep in deps.get(path, []):
            visit(dep, (*stack, path))
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise GuestSetupError(f"kernel module {name} not found in modules.dep")
        visit(by_name[name], ())
    return order


def _decompress_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=64 << 20))
    return data


_LZ4_LEGACY = b"\x02\x21\x4c\x18"


def extract_vmlinux(vmlinuz: bytes, work: Path) -> bytes:
    """Find the compressed payload in a bzImage and return the ELF ``vmlinux`` inside it."""
    candidates: list[tuple[int, str]] = []
    for magic, kind in ((_LZ4_LEGACY, "lz4"), (b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"),
                        (b"\x28\xb5\x2f\xfd", "zstd")):
        i = vmlinuz.find(magic)
        if i >= 0:
            candidates.append((i, kind))
    for offset, kind in sorted(candidates):
        try:
            elf = _decompress_payload(vmlinuz[offset:], kind, work)
        except (GuestSetupError, lzma.LZMAError, OSError, EOFError):
            continue
        if elf.startswith(b"\x7fELF"):
            return elf
    raise GuestSetupError("no ELF kernel found inside the vmlinuz (unknown compression)")


def _decompress_payload(payload: bytes, kind: str, work: Path) -> bytes:
    if kind == "xz":
        return lzma.LZMADecompressor().decompress(payload)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=io.BytesIO(payload)).read()
    if kind == "zstd":
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(payload))
    # The lz4 legacy frame format has no Python decoder in our dependencies: use Debian's lz4 tool.
    src = work / "payload.lz4"
    src.write_bytes(payload)
    done = subprocess.run(["lz4", "-dc", str(src)], capture_output=True, timeout=120)
    if not done.stdout:
        raise GuestSetupError(f"lz4 -dc failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _build_agent(source: bytes, out: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="amber-agent-") as tmp:
        src = Path(tmp) / "agent.c"
        src.write_bytes(source)
        binary = Path(tmp) / "amber-agent"
        _run(["gcc", *AGENT_CFLAGS, "-o", str(binary), str(src)], "compiling the guest agent")
        tmp_out = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.copyfile(binary, tmp_out)
        tmp_out.chmod(0o755)
        os.replace(tmp_out, out)
    version = _run(["gcc", "-dumpfullversion"], "gcc -dumpfullversion").strip()
    return version


def _build_initramfs(agent: Path, modules: Path, order: tuple[str, ...], network: tuple[str, ...], out: Path) -> None:
    # load.list: one module per line in load order; "net:" marks those only a networked VM loads.
    load_list = "".join(f"net:{m}\n" if m in network else f"{m}\n" for m in order)
    entries = [
        CpioEntry.directory("dev"),
        CpioEntry.char_device("dev/console", 0o600, 5, 1),
        CpioEntry.directory("proc"),
        CpioEntry.directory("sys"),
        CpioEntry.directory("newroot"),
        CpioEntry.directory("lib"),
        CpioEntry.directory("lib/modules"),
        CpioEntry.file("init", agent.read_bytes(), 0o755),
        CpioEntry.file("lib/modules/load.list", load_list.encode(), 0o644),
    ]
    entries += [CpioEntry.file(f"lib/modules/{m}.ko", (modules / f"{m}.ko").read_bytes(), 0o644) for m in order]
    # mtime=0 keeps the initramfs byte-identical across rebuilds of the same inputs.
    _atomic_write(out, gzip.compress(write_newc(entries), compresslevel=6, mtime=0))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
