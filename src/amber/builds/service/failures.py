"""How builds end badly: ``fail`` (a terminal ``error`` entry with the contract's failure detail) and ``recover``
(builds whose worker died end as ``interrupted``; so do waiting builds whose memory-only inputs are gone).

A failed or cancelled build keeps a ``cache_summary`` of what it reused before it ended, as a successful one does.
Recovery also removes what a dead worker left: its QEMU processes, its work directory and its unpublished
artifact directory.
"""

from __future__ import annotations

import asyncio
import shutil
from json import loads
from typing import Any

from sqlalchemy.orm import Session

from amber.builds.logbus import Published
from amber.builds.queue import WorkerIdentity, orphaned_builds, stranded_waiting
from amber.builds.service.journal import Journal
from amber.contract.failures import FAILURE_LOG_PHASES, FailurePhase, failure_detail, failure_message
from amber.contract.logs import CACHE_SUMMARY_KEYS, CacheKind, CacheStatus, cache_summary_key
from amber.contract.status import ACTIVE_STATUSES
from amber.settings import Settings
from amber.store import builds as store_builds
from amber.store.models import Build, utcnow
from amber.vm import sweep_stale

_CACHE_KINDS = {k.value for k in CacheKind}
_CACHE_STATUSES = {s.value for s in CacheStatus}


def cache_summary_so_far(session: Session, build_id: str) -> dict[str, int] | None:
    """TemplateBuildCacheSummary of the cache entries a build logged before it failed or was cancelled (None when
    it logged none): history shows what a failed attempt reused, as it does for a successful one."""
    counts = dict.fromkeys(CACHE_SUMMARY_KEYS, 0)
    seen = False
    for entry_json in store_builds.cache_entries(session, build_id):
        entry = loads(entry_json)
        kind, status = entry.get("cache_kind"), entry.get("cache_status")
        if kind in _CACHE_KINDS and status in _CACHE_STATUSES:
            counts[cache_summary_key(CacheKind(kind), CacheStatus(status))] += 1
            seen = True
    return counts if seen else None


class Failures(Journal):
    settings: Settings
    identity: WorkerIdentity

    async def fail(
        self,
        build_id: str,
        *,
        code: str,
        message: str,
        phase: str,
        reason: str,
        step_index: int | None = None,
        allow_waiting: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> bool:
        """End an active build with ``status=error`` and a terminal ``error`` entry carrying the detail."""
        message = failure_message(message, [str(self.settings.data_dir.resolve())])  # no server path reaches users

        def write(session: Session) -> Published | None:
            build = session.get(Build, build_id)
            if build is None or build.status not in ACTIVE_STATUSES:
                return None
            if build.status == "waiting" and not allow_waiting:
                return None
            detail = failure_detail(code=code, message=message, phase=phase, build_id=build_id,
                                    attempt=build.attempt, reason=reason, step_index=step_index, extra=extra)
            return self._append(
                session, build, "error", message, level="error",
                fields={"error_detail": detail, "attempt": build.attempt, "step_index": step_index,
                        "phase": FAILURE_LOG_PHASES.get(phase)},
                new_status="error",
                status_values={
                    "finished_at": utcnow(),
                    "cache_summary": cache_summary_so_far(session, build_id),
                    "error": message,
                    "error_detail": detail,
                    "failure_phase": phase,
                    "lease_owner": None,
                    "pinned_worker": None,
                },
            )

        item = await self.db.run(write)
        self._publish(build_id, item)
        return item is not None

    async def recover(self) -> list[str]:
        """End builds whose worker died (``interrupted``) and waiting builds whose memory-only inputs are gone.
        Waiting builds without such inputs stay queued and are resumed. Returns the ended build ids."""

        def scan(session: Session) -> tuple[list[str], list[str]]:
            return ([b.id for b in orphaned_builds(session, self.identity)],
                    [b.id for b in stranded_waiting(session, self.identity)])

        # QEMU processes and run directories of dead owners (a killed server leaves its VMs running).
        await asyncio.to_thread(sweep_stale, self.settings.data_dir)
        running, stranded = await self.db.run(scan)
        ended = []
        for build_ids, reason, message in (
            (running, "worker_lost", "build interrupted: the server running it stopped (restart or crash) before it "
                                     "finished; its VM and scratch files were cleaned up"),
            (stranded, "inputs_lost", "build interrupted: the server restarted before the build started, and its "
                                      "secrets, credentials or inline context are never stored; start it again "
                                      "with fresh inputs"),
        ):  # fmt: skip
            for build_id in build_ids:
                if await self.fail(build_id, code="build_error", phase=FailurePhase.INTERRUPTED.value, reason=reason,
                                   message=message):  # fmt: skip
                    ended.append(build_id)
        await asyncio.to_thread(self._discard_build_files, ended)
        return ended

    def _discard_build_files(self, build_ids: list[str]) -> None:
        """Scratch files a dead worker left for ``build_ids`` (the pipeline's ``builds/<id>`` work directory
        and its unpublished ``artifacts/<id>`` directory)."""
        for build_id in build_ids:
            shutil.rmtree(self.settings.data_dir / "builds" / build_id, ignore_errors=True)
            shutil.rmtree(self.settings.data_dir / "artifacts" / build_id, ignore_errors=True)
