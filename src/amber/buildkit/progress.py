"""BuildKit progress (``moby.buildkit.trace`` aux messages of the /build stream) → the pipeline's LogEvents.

Each trace message is a base64 protobuf ``moby.buildkit.v1.StatusResponse``: vertexes (one per LLB step,
named like ``[builder 2/4] RUN make``), statuses (byte counters) and logs (output chunks per vertex).
Guarantees: one ``step`` entry when a Dockerfile instruction starts, its output split into lines (each one an
entry of the same step), a ``cache`` hit entry for every instruction BuildKit served from cache, an error
entry when a vertex fails. Every message passes through ``redact`` first. Internal vertices
(``[internal] load metadata …``) become ``preparing`` debug entries.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from amber.buildkit import wire
from amber.contract.logs import CacheKind, CacheStatus, LogEvent, LogKind, LogLevel, LogPhase

_STEP_NAME = re.compile(r"^\[(?:(?P<stage>[^\]\s]+) )?(?P<index>\d+)/(?P<count>\d+)\] (?P<instruction>.*)$", re.S)
_MAX_LINE = 4096
TAIL_LINES = 20  # output lines a failed instruction's error message quotes (as the native pipeline's steps)


@dataclass
class Vertex:
    digest: str
    name: str
    cached: bool = False
    started: bool = False
    completed: bool = False
    error: str = ""


@dataclass
class TraceUpdate:
    """One decoded StatusResponse."""

    vertexes: list[Vertex] = field(default_factory=list)
    logs: list[tuple[str, bytes]] = field(default_factory=list)  # (vertex digest, output chunk)


def decode_trace(payload: str | bytes) -> TraceUpdate:
    """Decode a ``moby.buildkit.trace`` aux payload (base64 of a StatusResponse)."""
    raw = base64.b64decode(payload) if isinstance(payload, str) else payload
    message = wire.decode(raw)
    update = TraceUpdate()
    for vertex in message.messages(1):
        update.vertexes.append(
            Vertex(
                digest=vertex.string(1),
                name=vertex.string(3),
                cached=bool(vertex.int_(4)),
                started=vertex.has(5),
                completed=vertex.has(6),
                error=vertex.string(7),
            )
        )
    for log in message.messages(3):
        update.logs.append((log.string(1), log.bytes_(4)))
    return update


def is_instruction(name: str) -> bool:
    return _STEP_NAME.match(name) is not None


def is_from(name: str) -> bool:
    """``[stage k/n] FROM <image>@<digest>``: BuildKit reports an image source as run even when nothing changed."""
    match = _STEP_NAME.match(name)
    return match is not None and match.group("instruction").startswith("FROM ")


def rerun_instructions(first: ProgressTranslator, again: ProgressTranslator) -> set[str]:
    """Instructions the second solve of the same build ran instead of taking them from the first solve's cache.
    An image source counts only if the first solve did not use it: its name carries the resolved digest, so a
    base tag that moved in between shows up here."""
    return {name for name in again.ran if not (is_from(name) and name in first.seen)}


@dataclass
class _VertexState:
    step_index: int | None
    announced: bool = False
    cached_reported: bool = False
    failed_reported: bool = False
    partial: bytes = b""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))  # last output lines, redacted


@dataclass(frozen=True)
class FailedInstruction:
    """The first Dockerfile instruction whose vertex reported an error (all text redacted)."""

    step_index: int
    name: str  # as BuildKit labels it: ``[stage k/n] RUN make``
    error: str  # BuildKit's error, e.g. ``… did not complete successfully: exit code: 2``
    tail: tuple[str, ...]  # its last output lines

    @property
    def instruction(self) -> str:
        """``RUN make`` (the name without its ``[stage k/n]`` label)."""
        match = _STEP_NAME.match(self.name)
        return match.group("instruction") if match else self.name

    @property
    def exit_code(self) -> int | None:
        match = re.search(r"exit code: (\d+)\s*$", self.error)
        return int(match.group(1)) if match else None


class ProgressTranslator:
    """Stateful: feed it decoded trace updates in order, get LogEvents back."""

    def __init__(
        self,
        *,
        total_steps: int | None = None,
        step_offsets: Mapping[str, int] | None = None,
        redact: Callable[[str], str] = lambda s: s,
    ) -> None:
        self.total_steps = total_steps
        self.step_offsets = dict(step_offsets or {})
        self.redact = redact
        self._vertices: dict[str, _VertexState] = {}
        self._names: dict[str, str] = {}
        self._next_index = 1
        self.cache_hits = 0
        self.cache_misses = 0
        self.seen: set[str] = set()  # names of every instruction vertex (a FROM's name carries its resolved digest)
        self.ran: set[str] = set()  # names of instruction vertices that completed without coming from the cache
        self.failed: FailedInstruction | None = None  # the first instruction whose vertex reported an error

    @property
    def failed_step_index(self) -> int | None:
        return self.failed.step_index if self.failed is not None else None

    def _state(self, digest: str, name: str) -> _VertexState:
        state = self._vertices.get(digest)
        if state is None:
            state = _VertexState(self._step_index(name))
            self._vertices[digest] = state
        return state

    def _step_index(self, name: str) -> int | None:
        """Global 1-based step of an instruction vertex: from its ``[stage k/n]`` label when the stage is known
        (Dockerfile order, stable however BuildKit orders its updates), else in order of first sight."""
        match = _STEP_NAME.match(name)
        if match is None:
            return None
        offset = self.step_offsets.get(match.group("stage") or "")
        if offset is not None:
            return offset + int(match.group("index"))
        index = (self.total_steps or 0) + self._next_index  # after every known step
        self._next_index += 1
        return index

    def _event(self, kind: LogKind, message: str, *, level: LogLevel, state: _VertexState, **extra: object) -> LogEvent:
        phase = LogPhase.STEP if state.step_index is not None else LogPhase.PREPARING
        return LogEvent(
            kind=kind,
            message=self.redact(message),
            level=level,
            phase=phase,
            step_index=state.step_index,
            total_steps=self.total_steps if state.step_index is not None else None,
            **extra,  # type: ignore[arg-type]
        )

    def feed(self, update: TraceUpdate) -> list[LogEvent]:
        events: list[LogEvent] = []
        finished: list[tuple[Vertex, str, _VertexState]] = []
        for vertex in update.vertexes:
            if vertex.name:
                self._names[vertex.digest] = vertex.name
            name = self._names.get(vertex.digest, vertex.name)
            state = self._state(vertex.digest, name)
            instruction = state.step_index is not None
            if instruction:
                self.seen.add(name)
                if vertex.completed and not vertex.cached and not vertex.error:
                    self.ran.add(name)
            if vertex.cached and instruction and not state.cached_reported:
                state.cached_reported = state.announced = True
                self.cache_hits += 1
                events.append(
                    self._event(
                        LogKind.CACHE,
                        f"{name} (cached)",
                        level=LogLevel.INFO,
                        state=state,
                        cache_kind=CacheKind.LAYER,
                        cache_status=CacheStatus.HIT,
                        cache_subject=name,
                    )
                )
            elif vertex.started and not state.announced:
                state.announced = True
                if instruction:
                    self.cache_misses += 1
                level = LogLevel.INFO if instruction else LogLevel.DEBUG
                events.append(self._event(LogKind.MESSAGE, name, level=level, state=state))
            if vertex.error or vertex.completed:
                finished.append((vertex, name, state))
        # Output before completion: a vertex's last chunk may arrive in the same update that completes it.
        for digest, chunk in update.logs:
            state = self._state(digest, self._names.get(digest, ""))
            data = state.partial + chunk
            *lines, state.partial = data.split(b"\n")
            if len(state.partial) > _MAX_LINE:
                lines.append(state.partial)
                state.partial = b""
            for line in lines:
                events.append(self._line(state, line))
        for vertex, name, state in finished:
            events.extend(self._flush(state))
            if vertex.error and not state.failed_reported:
                state.failed_reported = True
                if state.step_index is not None and self.failed is None:
                    self.failed = FailedInstruction(
                        state.step_index, self.redact(name), self.redact(vertex.error), tuple(state.tail)
                    )
                message = f"{name}: {vertex.error}"
                events.append(self._event(LogKind.MESSAGE, message, level=LogLevel.ERROR, state=state))
        return events

    def _line(self, state: _VertexState, line: bytes) -> LogEvent:
        text = line.decode(errors="replace").rstrip("\r")
        event = self._event(LogKind.MESSAGE, text, level=LogLevel.INFO, state=state)
        state.tail.append(event.message)
        return event

    def _flush(self, state: _VertexState) -> list[LogEvent]:
        if not state.partial:
            return []
        line, state.partial = state.partial, b""
        return [self._line(state, line)]

    def finish(self) -> list[LogEvent]:
        """Output left without a final newline."""
        events: list[LogEvent] = []
        for state in self._vertices.values():
            events.extend(self._flush(state))
        return events
