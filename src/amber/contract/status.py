"""Build status (templates-models.md TemplateBuildStatus): the closed set, and which statuses are still active."""

from __future__ import annotations

from enum import StrEnum


class BuildStatus(StrEnum):
    WAITING = "waiting"
    BUILDING = "building"
    READY = "ready"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self.value in TERMINAL_STATUSES


ACTIVE_STATUSES = ("waiting", "building")  # a build in these may still write log entries
TERMINAL_STATUSES = ("ready", "error", "cancelled")  # after these nothing is appended
