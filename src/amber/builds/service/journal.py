"""The build journal: one durable, gap-free log per build, and the reads of builds and their logs.

Guarantees:
- log offsets are allocated by an atomic ``UPDATE … RETURNING`` on the build row (``amber.store.builds``), so the
  worker, a cancel from any host and recovery all write into one gap-free sequence;
- nothing is appended after a terminal entry (``end``, ``error``, ``cancelled``), and a terminal entry commits
  together with the status change it carries;
- every entry is stored before it is published on the in-process ``LogBus`` (followers elsewhere re-read).
Builds of another namespace read as not found.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from amber.builds.logbus import LogBus, Published
from amber.builds.views import build_summary, build_view, dumps, ts
from amber.contract.logs import LogEvent
from amber.contract.template_refs import TemplateRef
from amber.store import builds as store_builds
from amber.store import catalog
from amber.store.database import Database
from amber.store.errors import NotFound
from amber.store.keys import Caller
from amber.store.models import Artifact, Build, Namespace, Template, utcnow

MAX_SNAPSHOT_ENTRIES = 1000
_SERVICE_KINDS = frozenset({"start", "end", "error", "cancelled"})  # written by the service, never by a pipeline


def build_not_found(build_id: str) -> NotFound:
    return NotFound(f"template build {build_id!r} not found", code="template_build_not_found")


class Journal:
    """Appends and reads build log entries and build views (the base of ``BuildService``)."""

    db: Database
    bus: LogBus

    def _append(
        self,
        session: Session,
        build: Build,
        kind: str,
        message: str,
        *,
        level: str = "info",
        fields: dict[str, Any] | None = None,
        new_status: str | None = None,
        status_values: dict[str, Any] | None = None,
        allow_terminal: bool = False,
    ) -> Published | None:
        """Append one entry (and optionally move the build to ``new_status``) atomically. Returns None when the
        build is already terminal (nothing is written after a terminal entry)."""
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now, **({"status": new_status} if new_status else {}),
                                  **(status_values or {})}
        offset = store_builds.take_offset(session, build.id, values, allow_terminal=allow_terminal)
        if offset is None:
            return None
        entry: dict[str, Any] = {
            "build_id": build.id,
            "template_id": build.artifact_id,
            "offset": offset,
            "timestamp": ts(now),
            "kind": kind,
            "level": level,
            "message": message,
        }
        for key, value in (fields or {}).items():
            if value is not None:
                entry[key] = value
        entry_json = dumps(entry)
        store_builds.add_entry(session, build.id, offset, kind, now, entry_json)
        return Published(offset=offset, kind=kind, entry_json=entry_json)

    def _publish(self, build_id: str, item: Published | None) -> None:
        if item is not None:
            self.bus.publish(build_id, item)

    async def emit(self, build_id: str, event: LogEvent, *, attempt: int) -> bool:
        """Persist one pipeline event; False once the build is terminal (the worker should stop)."""
        fields = {
            "phase": event.phase.value if event.phase else None,
            "step_index": event.step_index,
            "total_steps": event.total_steps,
            "attempt": attempt,
            "cache_kind": event.cache_kind.value if event.cache_kind else None,
            "cache_status": event.cache_status.value if event.cache_status else None,
            "cache_reason": event.cache_reason.value if event.cache_reason else None,
            "cache_subject": event.cache_subject,
        }
        kind = "message" if event.kind.value in _SERVICE_KINDS else event.kind.value

        def write(session: Session) -> Published | None:
            build = session.get(Build, build_id)
            if build is None:
                return None
            return self._append(session, build, kind, event.message, level=event.level.value, fields=fields)

        item = await self.db.run(write)
        self._publish(build_id, item)
        return item is not None

    async def entries_since(self, build_id: str, offset: int, limit: int) -> tuple[list[Published], str | None]:
        """Stored entries from ``offset`` on (ascending) and the build's status (None if it no longer exists)."""

        def read(session: Session) -> tuple[list[Published], str | None]:
            rows = store_builds.entries_from(session, build_id, offset, limit)
            status = store_builds.status_of(session, build_id)
            return [Published(offset=r[0], kind=r[1], entry_json=r[2]) for r in rows], status

        return await self.db.read(read)

    # -- reads ----------------------------------------------------------------------------------------------------

    def _owned_build(self, session: Session, caller: Caller, build_id: str) -> Build:
        build = session.get(Build, build_id)
        if build is None or build.namespace_id != caller.namespace_id:
            raise build_not_found(build_id)
        return build

    def _view(self, session: Session, build: Build) -> dict[str, Any]:
        template = session.get(Template, build.template_id)
        namespace = session.get(Namespace, build.namespace_id)
        assert template is not None and namespace is not None
        return build_view(build, template, namespace, artifact_exists=session.get(Artifact, build.artifact_id)
                          is not None)

    async def get_owned(self, caller: Caller, build_id: str) -> Build:
        return await self.db.read(lambda s: self._owned_build(s, caller, build_id))

    async def snapshot_json(self, caller: Caller, build_id: str, offset: int) -> str:
        """TemplateBuildStatusSnapshot as JSON text (entries are spliced in as stored, not re-encoded)."""

        def read(session: Session) -> str:
            row = store_builds.build_with_context(session, build_id)
            if row is None or row[0].namespace_id != caller.namespace_id:
                raise build_not_found(build_id)
            view = build_view(row[0], row[1], row[2], artifact_exists=row[3])
            rows = store_builds.entries_from(session, build_id, offset, MAX_SNAPSHOT_ENTRIES)
            next_offset = max(offset, rows[-1][0] + 1) if rows else offset
            entries = ",".join(r[2] for r in rows)
            return f'{{"build":{dumps(view)},"entries":[{entries}],"next_offset":{next_offset}}}'

        return await self.db.read(read)

    async def build_json(self, build_id: str) -> dict[str, Any]:
        def read(session: Session) -> dict[str, Any]:
            build = session.get(Build, build_id)
            if build is None:
                raise build_not_found(build_id)
            return self._view(session, build)

        return await self.db.read(read)

    async def list_builds(
        self,
        caller: Caller,
        ref: TemplateRef,
        *,
        status: str | None,
        backend: str | None,
        source_type: str | None,
        limit: int,
        cursor: str | None,
    ) -> dict[str, Any]:
        """Build history of the logical template (R26), newest first; ``cursor`` is the last build id seen."""

        def read(session: Session) -> dict[str, Any]:
            resolved = catalog.resolve(session, caller, ref)
            if resolved.template.namespace_id != caller.namespace_id:
                raise catalog.not_found(ref.text)  # builds are caller-scoped even for public templates
            rows = store_builds.template_builds(session, resolved.template.id, status=status, backend=backend,
                                                source_type=source_type, before=cursor, limit=limit + 1)
            artifact_ids = set(catalog.artifact_ids(session, resolved.template.id))
            out: dict[str, Any] = {
                "builds": [
                    build_summary(b, resolved.template, artifact_exists=b.artifact_id in artifact_ids)
                    for b in rows[:limit]
                ]
            }
            if len(rows) > limit:
                out["next_cursor"] = rows[limit - 1].id
            return out

        return await self.db.read(read)
