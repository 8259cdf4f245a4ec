"""End to end: registry → verified layers → unpacked tree → ext4, compared entry by entry with the expected tree.

The ext4 image is read back through a read-only loop mount; path, type, mode, uid, gid, size, content,
symlink target, hard-link identity and xattrs must all match (zero differences; only lost+found is extra).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amber.builds import image_import
from amber.builds.image_import import import_image
from amber.oci import BasicCredentials
from amber.oci.errors import DigestMismatchError, RegistryAuthError
from amber.oci.progress import ImportProgress
from tests.rootfs import fidelity
from tests.rootfs.treecmp import diff, fsck_clean, mounted_ro, snapshot
from tests.support.busybox import make_busybox_tree
from tests.support.images import (
    Compression,
    ImageConfig,
    Layer,
    TarEntry,
    build_image,
    push_busybox_image,
    push_image,
    tar_entries,
)
from tests.support.registry import Registry


class _Phases(ImportProgress):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def phase(self, name: str) -> None:
        if not self.seen or self.seen[-1] != name:
            self.seen.append(name)


def _busybox_expected(root: Path) -> Path:
    make_busybox_tree(root)
    for sub, mode in (("dev/pts", 0o755), ("dev/shm", 0o1777)):
        (root / sub).mkdir()
        os.chmod(root / sub, mode)
    return root


@pytest.mark.parametrize("compression", list(Compression))
def test_busybox_import_matches_the_tree(registry_noauth: Registry, tmp_path: Path, compression: Compression) -> None:
    ref = push_busybox_image(registry_noauth, repo=f"team/bb-{compression}", compression=compression)
    disk = tmp_path / "out" / "root.ext4"
    work = tmp_path / "work"
    phases = _Phases()
    result = asyncio.run(import_image(ref, disk, cache_dir=tmp_path / "cache", work_dir=work, progress=phases))
    assert result.layer_count == 1 and disk.exists() and list(work.iterdir()) == []
    assert phases.seen == ["resolve", "pull", "unpack", "ext4"]
    assert fsck_clean(disk) == ""
    with mounted_ro(disk) as mnt:
        assert diff(snapshot(_busybox_expected(tmp_path / "expected")), snapshot(mnt)) == []
    assert sorted(p.name for p in disk.parent.iterdir()) == ["root.ext4"]  # staging tree removed


def test_multi_layer_private_image_matches_expected_tree(registry_token: Registry, tmp_path: Path) -> None:
    layers = [
        Layer.from_tar(tar_entries(fidelity.layer1_entries(tmp_path)), Compression.GZIP),
        Layer.from_tar(tar_entries(fidelity.LAYER2), Compression.ZSTD),
        Layer.from_tar(tar_entries(fidelity.LAYER3), Compression.NONE),
    ]
    image = build_image(layers, ImageConfig(user="app:staff"))
    digest = push_image(registry_token, "private/fidelity", image, "v1")
    assert registry_token.credentials is not None
    creds = BasicCredentials(*registry_token.credentials)
    disk = tmp_path / "fidelity.ext4"
    result = asyncio.run(import_image(f"{registry_token.host}/private/fidelity:v1", disk, credentials=creds,
                                      cache_dir=tmp_path / "cache", min_size_mib=96))
    assert result.manifest_digest == digest and result.layer_count == 3
    assert result.disk_size_bytes >= 96 * 1024 * 1024 and disk.stat().st_size == result.disk_size_bytes
    assert fsck_clean(disk) == ""
    expected = snapshot(fidelity.materialize_expected(tmp_path / "expected"))
    with mounted_ro(disk) as mnt:
        actual = snapshot(mnt)
        assert (mnt / "lost+found").is_dir()
        assert os.stat(mnt).st_mode & 0o7777 == 0o755
        assert int(os.lstat(mnt / "opt/fx/file").st_mtime) == TarEntry("x").mtime
    assert diff(expected, actual) == []
    assert frozenset({"opt/fx/file", "opt/fx/hardlink", "opt/fx/hl2"}) in actual.hardlink_groups
    # The second import of the same image downloads nothing.
    again = asyncio.run(import_image(f"{registry_token.host}/private/fidelity@{digest}", tmp_path / "again.ext4",
                                     credentials=creds, cache_dir=tmp_path / "cache"))
    assert again.downloaded_bytes == 0 and again.manifest_digest == digest


def test_failed_import_leaves_nothing_behind(registry_noauth: Registry, tmp_path: Path) -> None:
    layer = Layer.from_tar(tar_entries([TarEntry("big", data=os.urandom(200_000))]), Compression.GZIP)
    push_image(registry_noauth, "team/broken", build_image([layer]), "b")
    blob = registry_noauth.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(DigestMismatchError):
        asyncio.run(import_image(f"{registry_noauth.host}/team/broken:b", out / "x.ext4", cache_dir=tmp_path / "c"))
    assert not out.exists() or list(out.iterdir()) == []


def test_hostile_layer_import_fails_cleanly(registry_noauth: Registry, tmp_path: Path) -> None:
    layer = Layer.from_tar(tar_entries([TarEntry("ok", data=b"1"), TarEntry("../../escape", data=b"x")]),
                           Compression.GZIP)
    push_image(registry_noauth, "team/hostile", build_image([layer]), "h")
    out = tmp_path / "out"
    with pytest.raises(Exception, match=r"entry '\.\./\.\./escape'") as caught:
        asyncio.run(import_image(f"{registry_noauth.host}/team/hostile:h", out / "x.ext4", cache_dir=tmp_path / "c",
                                 work_dir=tmp_path / "work"))
    assert layer.digest in str(caught.value)
    assert list(out.iterdir()) == [] and list((tmp_path / "work").iterdir()) == []
    assert not (tmp_path / "escape").exists()


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amber.cli", "image", "import", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_cli_import_with_password_stdin(registry_htpasswd: Registry, tmp_path: Path) -> None:
    ref = push_busybox_image(registry_htpasswd, repo="private/cli")
    assert registry_htpasswd.credentials is not None
    user, password = registry_htpasswd.credentials
    disk = tmp_path / "cli.ext4"
    ok = _cli(ref, "--output", str(disk), "--platform", "linux/amd64", "--username", user, "--password-stdin",
              "--data-dir", str(tmp_path / "data"), stdin=password + "\n")
    assert ok.returncode == 0, ok.stderr
    summary = ok.stdout.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"imported {ref}") and "sha256:" in summary[0]
    assert "1 layers" in summary[0] and str(disk) in summary[0]
    assert disk.exists() and list((tmp_path / "data" / "cache" / "layers" / "sha256").iterdir())
    bad = _cli(ref, "--output", str(tmp_path / "bad.ext4"), "--username", user, "--password-stdin",
               "--data-dir", str(tmp_path / "data"), stdin="not-the-password\n")
    assert bad.returncode == 1 and "wrong username or password" in bad.stderr
    assert "not-the-password" not in bad.stderr + bad.stdout and not (tmp_path / "bad.ext4").exists()
    assert RegistryAuthError.__name__  # the CLI maps every ImageImportError to exit code 1


def test_cli_help_renders() -> None:
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--output", "--platform", "--username", "--password-stdin", "--min-size-mib"):
        assert option in result.stdout


def test_cli_rejects_password_without_stdin(tmp_path: Path) -> None:
    result = _cli("127.0.0.1:1/x:y", "--output", str(tmp_path / "x"), "--username", "u")
    assert result.returncode == 2 and "--password-stdin" in result.stderr
    malformed = _cli("Bad//Ref", "--output", str(tmp_path / "x"), "--data-dir", str(tmp_path))
    assert malformed.returncode == 1 and "Bad//Ref" in malformed.stderr


def test_disk_cache_reuses_the_disk_but_still_checks_access(registry_htpasswd: Registry, tmp_path: Path) -> None:
    ref = push_busybox_image(registry_htpasswd, repo="private/diskcache")
    assert registry_htpasswd.credentials is not None
    creds = BasicCredentials(*registry_htpasswd.credentials)
    kwargs = {"cache_dir": tmp_path / "layers", "disk_cache_dir": tmp_path / "disks", "credentials": creds}
    first = asyncio.run(import_image(ref, tmp_path / "a.ext4", **kwargs))  # type: ignore[arg-type]
    second = asyncio.run(import_image(ref, tmp_path / "b.ext4", **kwargs))  # type: ignore[arg-type]
    assert not first.disk_cached and second.disk_cached and second.downloaded_bytes == 0
    assert (tmp_path / "a.ext4").read_bytes() == (tmp_path / "b.ext4").read_bytes()
    assert (tmp_path / "b.ext4").stat().st_blocks * 512 < (tmp_path / "b.ext4").stat().st_size  # still sparse
    with pytest.raises(RegistryAuthError):
        asyncio.run(import_image(ref, tmp_path / "c.ext4", cache_dir=tmp_path / "layers",
                                 disk_cache_dir=tmp_path / "disks", credentials=BasicCredentials(creds.username, "x")))
    assert not (tmp_path / "c.ext4").exists()


def test_tree_too_big_for_the_memory_budget_moves_to_disk(
    registry_noauth: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = push_busybox_image(registry_noauth, repo="team/budget")
    small = tmp_path / "small-tmpfs"
    # Stand-in for a nearly full tmpfs: a staging area whose budget the busybox tree exceeds.
    monkeypatch.setattr(image_import, "staging_area", lambda *_: (small, 200_000))
    disk = tmp_path / "out" / "d.ext4"
    asyncio.run(import_image(ref, disk, cache_dir=tmp_path / "cache"))
    assert list(small.iterdir()) == [] and sorted(p.name for p in disk.parent.iterdir()) == ["d.ext4"]
    with mounted_ro(disk) as mnt:
        assert diff(snapshot(_busybox_expected(tmp_path / "expected")), snapshot(mnt)) == []


@pytest.mark.parametrize("phase", ["pull", "unpack", "ext4"])
def test_cancelled_import_leaves_nothing_behind(registry_noauth: Registry, tmp_path: Path, phase: str) -> None:
    layer = Layer.from_tar(tar_entries([TarEntry("blob", data=os.urandom(3_000_000))]), Compression.GZIP)
    push_image(registry_noauth, "team/cancel", build_image([layer]), "c")
    ref = f"{registry_noauth.host}/team/cancel:c"
    out_dir, work = tmp_path / "out", tmp_path / "work"
    out_dir.mkdir()
    (out_dir / "d.ext4").write_bytes(b"previous")  # an earlier file at the output path must survive

    class CancelAt(ImportProgress):
        def __init__(self) -> None:
            self.reached = asyncio.Event()

        def phase(self, name: str) -> None:
            if name == phase:
                self.reached.set()

    async def scenario() -> None:
        progress = CancelAt()
        task = asyncio.create_task(import_image(ref, out_dir / "d.ext4", cache_dir=tmp_path / "cache",
                                                work_dir=work, progress=progress))
        await progress.reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in out_dir.iterdir()) == ["d.ext4"]
    assert (out_dir / "d.ext4").read_bytes() == b"previous"
    assert not list((tmp_path / "cache").glob("tmp/*"))  # no half-downloaded layer left in the cache
