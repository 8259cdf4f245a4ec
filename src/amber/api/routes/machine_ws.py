"""The machine WebSocket (machines-api.md §5.6): ``GET /v1/machines/{id}/ws?channel=exec``.

Client frames (JSON text): ``exec_start``, ``exec_connect``, ``exec_stdin``, ``exec_stdin_close``, ``exec_kill``.
Server frames: ``exec_started`` (always before any output of that command), ``exec_stdout``/``exec_stderr``
(text, UTF-8 decoded with invalid bytes replaced, a character never split), ``exec_exit``, ``error``.

Every command started here is a background process of the machine (listed, logged, killable): closing the socket
never kills it (M9), and ``exec_connect`` follows it again from another socket. ``timeout_secs`` bounds the start,
not the run (the channel cannot tell a streamed foreground run from a background one). An unknown key, another
namespace's machine or a channel other than ``exec`` is refused at the upgrade (401/404/501); the server pings
every 15 s.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from amber.api.deps import AppState
from amber.api.errors import error_body
from amber.contract.errors import InvalidRequest
from amber.contract.machines import ExecRequest, check_exec, parse_model
from amber.machines import commands
from amber.machines.errors import MachineProblem
from amber.machines.live import LiveMachine
from amber.machines.processes import Process, ProcessEvent
from amber.store.ids import request_id

router = APIRouter(prefix="/v1/machines", tags=["machines"])


async def _deny(websocket: WebSocket, status: int, code: str, message: str) -> None:
    await websocket.send_denial_response(JSONResponse(error_body(request_id(), code, message), status_code=status))


@router.websocket("/{machine_id}/ws")
async def machine_socket(websocket: WebSocket, machine_id: str) -> None:
    state: AppState = websocket.app.state.amber
    channel = websocket.query_params.get("channel", "exec")
    scheme, _, key = websocket.headers.get("authorization", "").partition(" ")
    caller = await state.caller_for(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
    if caller is None:
        await _deny(websocket, 401, "unauthorized", "missing or invalid API key")
        return
    if state.machines is None:
        await _deny(websocket, 503, "feature_unavailable", "machines are not enabled on this server")
        return
    if channel != "exec":
        await _deny(websocket, 501, "not_implemented", f"the {channel!r} channel is not available on this server")
        return
    try:
        live = await state.machines.live_for(caller, machine_id)
    except MachineProblem as exc:
        await _deny(websocket, exc.status, exc.code, exc.message)
        return
    await websocket.accept()
    session = _ExecSession(websocket, live)
    try:
        await session.serve()
    finally:
        session.close()


class _ExecSession:
    def __init__(self, websocket: WebSocket, live: LiveMachine) -> None:
        self.ws = websocket
        self.live = live
        self.loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.followed: list[tuple[Process, Any]] = []

    async def serve(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            while True:
                try:
                    text = await self.ws.receive_text()
                except WebSocketDisconnect:
                    return
                try:
                    message = json.loads(text)
                except ValueError:
                    self.outbox.put_nowait({"type": "error", "id": None, "message": "frames must be JSON objects"})
                    continue
                if not isinstance(message, dict):
                    self.outbox.put_nowait({"type": "error", "id": None, "message": "frames must be JSON objects"})
                    continue
                self.live.touch()
                try:
                    await self._handle(message)
                except (MachineProblem, InvalidRequest) as exc:
                    text = exc.message if isinstance(exc, MachineProblem) else str(exc)
                    self.outbox.put_nowait({"type": "error", "id": message.get("id"), "message": text})
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender

    async def _send_loop(self) -> None:
        while True:
            message = await self.outbox.get()
            try:
                await self.ws.send_text(json.dumps(message, ensure_ascii=False))
            except (WebSocketDisconnect, RuntimeError):
                return

    def close(self) -> None:
        for process, listener in self.followed:
            process.unlisten(listener)

    def _follower(self, frame_id: Any) -> _Follower:
        return _Follower(self.loop, self.outbox, frame_id)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        frame_id = message.get("id")
        if kind == "exec_start":
            body = {k: v for k, v in message.items() if k not in ("type", "id")}
            body["background"] = True
            req = parse_model(ExecRequest, body, "exec_start")
            check_exec(req)
            command = commands.resolve(self.live, req)
            follower = self._follower(frame_id)
            process = await commands.start(self.live, command, listener=follower)
            self.followed.append((process, follower))
            follower.begin(process.pid)
        elif kind == "exec_connect":
            process = commands.process_of(self.live, _pid(message))
            follower = self._follower(frame_id)
            if process.listen(follower):
                self.followed.append((process, follower))
                follower.begin(process.pid)
            else:
                follower.begin(process.pid)
                self.outbox.put_nowait({"type": "exec_exit", "id": frame_id, "pid": process.pid,
                                        "exit_code": process.exit_code})
        elif kind == "exec_stdin":
            data = message.get("data")
            if not isinstance(data, str):
                raise InvalidRequest("data", "must be a string")
            await commands.send_stdin(self.live, _pid(message), data.encode())
        elif kind == "exec_stdin_close":
            process = commands.process_of(self.live, _pid(message))
            if process.job is not None and process.running:
                process.job.close_stdin()
        elif kind == "exec_kill":
            await commands.kill(self.live, _pid(message))
        elif kind in ("ping", "keepalive"):
            self.outbox.put_nowait({"type": "pong", "id": frame_id})
        else:
            raise InvalidRequest("type", f"unknown frame type {kind!r} on the exec channel")


class _Follower:
    """A process listener feeding one socket: called in the agent's reader thread, it hands each event to the
    loop; events that arrive before ``begin`` (the ``exec_started`` frame) wait, so no output precedes it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, outbox: asyncio.Queue[dict[str, Any]], frame_id: Any) -> None:
        self.loop = loop
        self.outbox = outbox
        self.frame_id = frame_id
        self.pid = 0
        self.held: list[ProcessEvent] | None = []
        self.decoders = {"stdout": codecs.getincrementaldecoder("utf-8")("replace"),
                         "stderr": codecs.getincrementaldecoder("utf-8")("replace")}

    def __call__(self, event: ProcessEvent) -> None:
        self.loop.call_soon_threadsafe(self._on_loop, event)

    def _on_loop(self, event: ProcessEvent) -> None:
        if self.held is not None:
            self.held.append(event)
        else:
            self._deliver(event)

    def begin(self, pid: int) -> None:
        self.pid = pid
        self.outbox.put_nowait({"type": "exec_started", "id": self.frame_id, "pid": pid})
        held, self.held = self.held or [], None
        for event in held:
            self._deliver(event)

    def _deliver(self, event: ProcessEvent) -> None:
        if event.kind == "exit":
            for stream, decoder in self.decoders.items():
                rest = decoder.decode(b"", final=True)
                if rest:
                    self.outbox.put_nowait({"type": f"exec_{stream}", "id": self.frame_id, "pid": self.pid,
                                            "data": rest})
            self.outbox.put_nowait({"type": "exec_exit", "id": self.frame_id, "pid": self.pid,
                                    "exit_code": event.exit_code})
            return
        text = self.decoders[event.kind].decode(event.data)
        if text:
            self.outbox.put_nowait({"type": f"exec_{event.kind}", "id": self.frame_id, "pid": self.pid, "data": text})


def _pid(message: dict[str, Any]) -> int:
    pid = message.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise InvalidRequest("pid", "must be an integer")
    return pid
