"""The build service: accepts builds, keeps the one durable log per build, cancels, retries, promotes, recovers.

``BuildService`` is one object over four modules, each one concern:

- ``journal``: the log (one gap-free offset sequence per build, nothing after a terminal entry) and the reads
  of builds and their logs;
- ``accept``: every check, then one transaction (template row, consumed claim, build row, ``start`` entry) or
  nothing at all; memory-only inputs (secrets, credentials, inline bytes) never leave this process;
- ``lifecycle``: cancel, retry, promote and success;
- ``failures``: failure outcomes and recovery after a crash.

Every SQL statement is ``amber.store``'s; the workers (``amber.builds.workers``) call ``emit``, ``succeed``
and ``fail``.
"""

from __future__ import annotations

import asyncio

from amber.blobs.store import BlobStore
from amber.builds.executor import BuildInputs
from amber.builds.logbus import LogBus
from amber.builds.queue import WorkerIdentity
from amber.builds.service.failures import Failures
from amber.builds.service.lifecycle import Lifecycle
from amber.settings import Settings
from amber.store.database import Database


class BuildService(Lifecycle, Failures):
    def __init__(self, db: Database, settings: Settings, bus: LogBus, blobs: BlobStore) -> None:
        self.db = db
        self.settings = settings
        self.bus = bus
        self.blobs = blobs
        self.identity = WorkerIdentity.current()
        self.memory: dict[str, BuildInputs] = {}  # memory-only inputs of builds accepted here
        self.cancel_events: dict[str, asyncio.Event] = {}
        self.work_available = asyncio.Event()


__all__ = ["BuildService"]
