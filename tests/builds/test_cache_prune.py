"""Eviction on real files: build-cache chains, layer blobs, root disks, locks held by "running builds",
hard links shared with template artifacts, stale children, debris, and the ``amber cache`` commands."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from typer.testing import CliRunner

from amber.builds.image_import import disk_lock_path
from amber.builds.pipeline.prune import prune, scan, usage
from amber.builds.pipeline.store import CacheStore, EntryClaim, EntryHold
from amber.cli import app
from amber.oci import cache_locks
from amber.oci.cache import LayerCache

KIB = 1024
OLD = time.time() - 10 * 86400


def _data(n_kib: int, seed: int) -> bytes:
    return bytes([seed % 251]) * (n_kib * KIB)


def _age(path: Path, when: float = OLD) -> None:
    os.utime(path, (when, when))


def _publish_file(store: CacheStore, path: Path, parent: EntryHold | None, n_kib: int, when: float = OLD) -> EntryClaim:
    claim = store.claim(path, parent)
    assert claim is not None
    path.write_bytes(_data(n_kib, len(path.name)))
    claim.publish()
    claim.release()
    _age(Path(f"{path}.ok"), when)
    return claim


def _publish_final(store: CacheStore, path: Path, parent: EntryHold, links: list[Path], own_kib: int,
                   when: float = OLD) -> EntryClaim:  # fmt: skip
    claim = store.claim(path, parent)
    assert claim is not None
    path.mkdir()
    for i, src in enumerate(links):
        os.link(src, path / f"disk-{i}")
    (path / "memory").write_bytes(_data(own_kib, 7))
    claim.publish()
    claim.release()
    _age(Path(f"{path}.ok"), when)
    return claim


class Cache:
    """A data dir with: blob (64 KiB), root disk (64 KiB), base (256) → l1 (128) → l2 (64) → final (own 32 KiB,
    hard-linking base, l1, l2), and a template artifact hard-linking the final's files (outside the cache)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.store = CacheStore(data_dir / "cache" / "build")
        s = self.store
        self.base = _publish_file(s, s.base_path("sha256:" + "b" * 64), None, 256)
        self.l1 = _publish_file(s, s.layer_path("sha256:" + "1" * 64), self.base, 128)
        self.l2 = _publish_file(s, s.layer_path("sha256:" + "2" * 64), self.l1, 64)
        self.final = _publish_final(s, s.final_path("sha256:" + "f" * 64), self.l2,
                                    [self.base.path, self.l1.path, self.l2.path], 32)  # fmt: skip
        self.blobs = LayerCache(data_dir / "cache" / "layers")
        self.blob = self.blobs.path("sha256:" + "a" * 64)
        self.blob.parent.mkdir(parents=True)
        self.blob.write_bytes(_data(64, 3))
        _age(self.blob)
        disks = data_dir / "cache" / "disks"
        disks.mkdir(parents=True)
        self.disk = disks / f"{'d' * 64}-512m-v1.ext4"
        self.disk.write_bytes(_data(64, 5))
        _age(self.disk)

    def artifact(self) -> Path:
        """A template artifact made from the final entry (hard links, as the pipeline does)."""
        artifact = self.data_dir / "artifacts" / "tb_1"
        artifact.mkdir(parents=True)
        for f in self.final.path.iterdir():
            os.link(f, artifact / f.name)
        return artifact

    def ids(self) -> set[str]:
        return set(scan(self.data_dir).entries)


ALL = {
    "blob:" + "a" * 64, f"disk:{'d' * 64}-512m-v1.ext4", f"build:base/{'b' * 64}.raw",
    f"build:layers/{'1' * 64}.qcow2", f"build:layers/{'2' * 64}.qcow2", f"build:final/{'f' * 64}",
}  # fmt: skip


def test_usage_counts_each_file_once_and_nothing_an_artifact_also_links(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    total, kinds = usage(tmp_path)
    by_kind = {k.kind: k for k in kinds}
    assert total == (64 + 64 + 256 + 128 + 64 + 32) * KIB  # the final's hard links are not counted twice
    assert sum(k.bytes for k in kinds) == total
    assert by_kind["final artifacts"].entries == 1 and by_kind["final artifacts"].bytes == 32 * KIB
    cache.artifact()
    total, kinds = usage(tmp_path)
    assert total == (64 + 64) * KIB  # base, layers and the final's memory are kept alive by the artifact


def test_lru_chain_eviction_children_first_and_artifacts_untouched(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    artifact = cache.artifact()
    for entry in (cache.base, cache.l1, cache.l2, cache.final):  # the chain was used after blob and disk
        _age(Path(f"{entry.path}.ok"), time.time() - 3600)
    report = prune(tmp_path, max_bytes=1, min_idle_secs=60)
    # the artifact keeps every chain file alive: evicting the chain would free nothing, so it stays
    assert set(report.evicted) == {"blob:" + "a" * 64, f"disk:{'d' * 64}-512m-v1.ext4"}
    assert report.bytes_after == 0 and not cache.blob.exists() and not cache.disk.exists()
    assert not list((tmp_path / "cache" / "layers" / "locks").iterdir())  # lock files go with their blob

    for name in ("disk-1", "disk-2", "memory"):  # now only the base disk is shared with an artifact
        (artifact / name).unlink()
    report = prune(tmp_path, max_bytes=1, min_idle_secs=60)
    assert report.evicted == (f"build:final/{'f' * 64}", f"build:layers/{'2' * 64}.qcow2",
                              f"build:layers/{'1' * 64}.qcow2")  # fmt: skip
    assert report.bytes_before == (128 + 64 + 32) * KIB and report.bytes_after == 0
    assert cache.ids() == {f"build:base/{'b' * 64}.raw"}  # frees nothing: kept
    assert not list((tmp_path / "cache" / "build" / "layers").iterdir())  # markers and lock files went too
    assert (artifact / "disk-0").read_bytes() == _data(256, len(cache.base.path.name))  # artifact intact
    report = prune(tmp_path, max_bytes=1, min_idle_secs=60)
    assert report.evicted == ()


def test_limit_is_respected_lru_first(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    _age(cache.blob, time.time() - 3600)  # the blob was used more recently than anything else
    report = prune(tmp_path, max_bytes=100 * KIB, min_idle_secs=60)
    assert report.bytes_after <= 100 * KIB
    assert cache.ids() == {"blob:" + "a" * 64}


def test_entries_in_use_and_their_ancestors_are_never_evicted(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    store = cache.store
    base_use = store.use(cache.base.path)  # a running build hit base and l1
    assert base_use is not None
    use = store.use(cache.l1.path, base_use)
    assert use is not None
    creating = store.claim(store.layer_path("sha256:" + "3" * 64), use)  # ... and is creating l3 over l1
    assert creating is not None
    creating.path.write_bytes(b"half-written")

    async def hold_blob() -> int:
        return await cache.blobs.use("sha256:" + "a" * 64)  # an import reading the blob

    blob_fd = asyncio.run(hold_blob())
    disk_fd = cache_locks.try_lock(disk_lock_path(cache.disk), shared=True)
    assert disk_fd is not None
    try:
        report = prune(tmp_path, max_bytes=1, min_idle_secs=0)
        assert set(report.evicted) == {f"build:final/{'f' * 64}", f"build:layers/{'2' * 64}.qcow2"}
        assert cache.ids() == {"blob:" + "a" * 64, f"disk:{'d' * 64}-512m-v1.ext4", f"build:base/{'b' * 64}.raw",
                               f"build:layers/{'1' * 64}.qcow2"}  # fmt: skip
        assert creating.path.read_bytes() == b"half-written"  # not debris: its builder holds the lock
        assert cache.l1.path.exists() and cache.base.path.exists() and cache.blob.exists() and cache.disk.exists()
    finally:
        creating.release()
        use.release()
        base_use.release()
        cache_locks.unlock(blob_fd)
        cache_locks.unlock(disk_fd)
    # once the build ended, everything may go
    report = prune(tmp_path, max_bytes=1, min_idle_secs=0)
    assert cache.ids() == set() and report.bytes_after == 0


def test_hits_refresh_the_last_use(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    store = cache.store
    base = store.use(cache.base.path)
    assert base is not None
    base.release()
    report = prune(tmp_path, max_bytes=1, min_idle_secs=60)
    assert cache.ids() == {f"build:base/{'b' * 64}.raw"}  # used just now
    assert f"build:layers/{'1' * 64}.qcow2" in report.evicted


def test_a_child_over_a_rebuilt_parent_is_stale_a_miss_and_evicted(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    store = cache.store
    # the parent layer is evicted (say, by an older Amber or a crash between removals) and built again
    Path(f"{cache.l1.path}.ok").unlink()
    cache.l1.path.unlink()
    new_l1 = _publish_file(store, cache.l1.path, cache.base, 128, when=time.time())
    assert store.use(cache.l2.path, new_l1) is None  # a delta over other bytes: never a hit
    report = prune(tmp_path, max_bytes=0, min_idle_secs=60)  # unbounded: only what can never be a hit goes
    assert set(report.evicted) == {f"build:layers/{'2' * 64}.qcow2", f"build:final/{'f' * 64}"}
    assert cache.ids() == ALL - {f"build:layers/{'2' * 64}.qcow2", f"build:final/{'f' * 64}"}
    # and a claimant replaces a stale entry instead of trusting it
    _publish_file(store, cache.l2.path, cache.l1, 64)  # stale again: recorded over the old l1 generation
    claim = store.claim(cache.l2.path, new_l1)
    assert claim is not None and not cache.l2.path.exists()
    claim.release()


def test_legacy_layer_markers_are_invalid_and_debris_is_cleared(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    Path(f"{cache.l2.path}.ok").write_text("ok\n")  # written before parents were recorded
    _age(Path(f"{cache.l2.path}.ok"))
    killed = cache.store.layer_path("sha256:" + "9" * 64)
    killed.write_bytes(b"a killed build's half layer")  # no marker, no lock holder
    Path(f"{killed}.lock").touch()
    partial = tmp_path / "cache" / "layers" / "tmp" / "x.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"abandoned download")
    _age(partial)
    staged_disk = tmp_path / "cache" / "disks" / f".{'d' * 64}-512m-v1.ext4.0123abcd.tmp"
    staged_disk.write_bytes(b"mkfs killed halfway")
    _age(staged_disk)
    report = prune(tmp_path, max_bytes=0, min_idle_secs=60)
    assert report.debris == 3 and not killed.exists() and not Path(f"{killed}.lock").exists()
    assert not partial.exists() and not staged_disk.exists()
    assert set(report.evicted) == {f"build:layers/{'2' * 64}.qcow2", f"build:final/{'f' * 64}"}


def test_cli_usage_and_prune(tmp_path: Path) -> None:
    Cache(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["cache", "usage", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "step layers" in result.output and "2 entries" in result.output and "608.0 KiB" in result.output
    result = runner.invoke(app, ["cache", "prune", "--max-bytes", "200K", "--min-idle-secs", "0",
                                 "--data-dir", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "evicted build:final/" in result.output and "(limit 200.0 KiB)" in result.output
    total, _ = usage(tmp_path)
    assert total <= 200 * KIB
    result = runner.invoke(app, ["cache", "prune", "--max-bytes", "lots", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "not a size" in result.output
