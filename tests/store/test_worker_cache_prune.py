"""The build worker prunes the cache after every build it finishes (real SQLite store, real worker loop).

The executor is a stand-in that fails at once: what is tested is the worker's hook, not the pipeline (the
pipeline's eviction end to end is ``tests/builds/test_cache_eviction_e2e.py``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from sqlalchemy import select

from amber.blobs.store import BlobStore
from amber.builds.executor import BuildArtifact, BuildJob
from amber.builds.logbus import LogBus
from amber.builds.pipeline.prune import scan
from amber.builds.pipeline.store import CacheStore
from amber.builds.service import BuildService
from amber.builds.workers import WorkerPool
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import Emit
from amber.settings import Settings
from amber.store.database import Database, migrate
from amber.store.models import Build
from tests.store.test_store import new_build

OLD = time.time() - 86400


class FailingExecutor:
    async def run(self, job: BuildJob, emit: Emit, cancel: asyncio.Event) -> BuildArtifact:
        raise BuildFailed("stand-in executor", phase=FailurePhase.PREPARE)


def _entry(store: CacheStore, key: str, n_bytes: int) -> None:
    path = store.base_path("sha256:" + key * 64)
    claim = store.claim(path)
    assert claim is not None
    path.write_bytes(b"x" * n_bytes)
    claim.publish()
    claim.release()
    os.utime(f"{path}.ok", (OLD, OLD))


def test_worker_prunes_the_cache_to_its_limit_after_a_build(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'amber.db'}"
    migrate(url)
    db = Database(url)
    store = CacheStore(tmp_path / "cache" / "build")
    _entry(store, "1", 256 * 1024)
    _entry(store, "2", 256 * 1024)
    settings = Settings(data_dir=tmp_path, cache_max_bytes=300 * 1024, cache_min_idle_secs=60)
    service = BuildService(db, settings, LogBus(), BlobStore(tmp_path / "blobs"))
    build_id = new_build(db)

    async def go() -> str:
        pool = WorkerPool(service, 1, FailingExecutor())
        pool.start()
        try:
            for _ in range(200):
                status = await service.db.run(lambda s: s.scalar(select(Build.status).where(Build.id == build_id)))
                if status == "error" and len(scan(tmp_path).entries) < 2:
                    return status
                await asyncio.sleep(0.05)
            return str(status)
        finally:
            await pool.stop(grace_secs=5)

    try:
        assert asyncio.run(go()) == "error"
    finally:
        db.dispose()
    assert len(scan(tmp_path).entries) == 1  # one of the two 256 KiB entries went: 256 KiB <= 300 KiB
