"""The composition root: what one ``amber serve`` process is made of, and the one place it is wired together.

``create_server(settings)`` builds the database, the blob store, the build service with its log bus, the
in-process build workers and the dockerd lifecycle, and hands them to the HTTP app (``amber.api.app``), which
only knows routes, middleware and error handling. Migrations are not run here (``amber serve`` runs them
first).

Lifecycle, the app's lifespan: on start, whatever dead Amber processes left in the data directory (a dockerd, QEMU,
mounts, staging directories) is swept away (``amber.sweep``, then again every ``AMBER_SWEEP_INTERVAL_SECS``), the
builtin templates built in the data directory (``amber setup-base``, e.g. ``nullspace/base``) are registered in the
catalog (a missing one is a warning), builds a previous (killed) server left running end as ``interrupted`` (queued
ones are resumed) and the workers start; on stop, in reverse order, the workers stop (running builds end as
``interrupted``), the dockerd that Dockerfile builds started is stopped, and the database is closed. Each part is
one async context manager in ``lifecycle``; a part that fails to start stops the ones before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI

from amber.api.app import create_app
from amber.api.deps import AppState
from amber.blobs.store import BlobStore
from amber.buildkit.daemon import stop_managed_dockerds
from amber.builds.builtin import register_builtins
from amber.builds.logbus import LogBus
from amber.builds.service import BuildService
from amber.builds.workers import WorkerPool, load_executor
from amber.machines.manager import MachineManager
from amber.machines.pools import PoolController, WarmPools
from amber.machines.reaper import Reaper
from amber.machines.snapshots import Snapshots
from amber.settings import Settings
from amber.store.database import Database
from amber.sweep import sweep

log = logging.getLogger("amber.server")

Part = Callable[[], AbstractAsyncContextManager[None]]


def create_server(settings: Settings, *, workers: int | None = None) -> FastAPI:
    """The app for ``settings``. ``workers`` overrides ``settings.resolved_workers`` (0 = this process runs no
    builds: an API-only process in front of separate workers)."""
    db = Database(settings.resolved_database_url)
    blob_store = BlobStore(settings.blobs_dir)
    service = BuildService(db, settings, LogBus(), blob_store)
    manager = MachineManager(settings, db)
    pools = PoolController(manager)
    manager.pools = pools
    state = AppState(settings=settings, db=db, blobs=blob_store, builds=service, machines=manager,
                     snapshots=Snapshots(manager), warm_pools=WarmPools(pools))
    count = settings.resolved_workers if workers is None else workers
    lifecycle: list[Part] = [
        lambda: _sweeper(settings),
        lambda: _database(db),
        lambda: _builtin_templates(db, settings),
        _managed_dockerds,
        lambda: _build_workers(service, settings, count),
        lambda: _machines(manager, pools),  # after the workers: stops (hibernating its machines) before them
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for part in lifecycle:
                await stack.enter_async_context(part())
            yield

    return create_app(state, lifespan=lifespan)


@contextlib.asynccontextmanager
async def _sweeper(settings: Settings) -> AsyncIterator[None]:
    """Sweep once before anything starts (a previous server's dockerd must be gone before a new one starts on
    the same roots), then periodically until the app stops."""
    await _sweep_once(settings)

    async def periodically() -> None:
        while True:
            await asyncio.sleep(settings.sweep_interval_secs)
            await _sweep_once(settings)

    task = asyncio.create_task(periodically())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sweep_once(settings: Settings) -> None:
    try:
        report = await asyncio.to_thread(sweep, settings.data_dir)
    except Exception:
        log.exception("sweeping the data directory failed")
        return
    if not report.empty:
        log.warning("swept what dead Amber processes left: %s", report.summary())
    for path, reason in report.failed:
        log.error("cannot remove %s: %s", path, reason)


@contextlib.asynccontextmanager
async def _database(db: Database) -> AsyncIterator[None]:
    try:
        yield
    finally:
        db.dispose()


@contextlib.asynccontextmanager
async def _builtin_templates(db: Database, settings: Settings) -> AsyncIterator[None]:
    """``nullspace/base`` and any other builtin built here: catalog rows updated to this host's artifact."""
    await asyncio.to_thread(register_builtins, db, settings.data_dir)
    yield


@contextlib.asynccontextmanager
async def _managed_dockerds() -> AsyncIterator[None]:
    """The dockerd that Dockerfile builds start on demand must not outlive this process."""
    try:
        yield
    finally:
        await stop_managed_dockerds()


@contextlib.asynccontextmanager
async def _build_workers(service: BuildService, settings: Settings, count: int) -> AsyncIterator[None]:
    """End what a previous server left running, then run ``count`` build workers until the app stops."""
    ended = await service.recover()
    if ended:
        log.warning("ended %d build(s) left running by a previous server: %s", len(ended), ", ".join(ended))
    pool = WorkerPool(service, count, load_executor(settings) if count else None)
    if count:
        pool.start()
    try:
        yield
    finally:
        await pool.stop()


@contextlib.asynccontextmanager
async def _machines(manager: MachineManager, pools: PoolController) -> AsyncIterator[None]:
    """Machines a dead server ran are marked lost and hibernated ones come back; the reaper enforces time
    limits and the warm-pool controller keeps pools filled; at stop, parked VMs are released and running machines
    hibernated (they resume at the next start)."""
    await manager.recover()
    reaper = Reaper(manager)
    reaper.start()
    pools.start()
    try:
        yield
    finally:
        await pools.stop()
        await reaper.stop()
        await manager.shutdown()
