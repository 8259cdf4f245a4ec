"""Preview URLs: a machine's guest ports served through Amber's own HTTP server, routed by ``Host``.

``http://{port}-{machine_id}.{preview_domain}:{server_port}/…`` reaches ``port`` on the guest's loopback through
the guest agent's relay (no host port, no port forwarding; the guest network stays isolated). HTTP requests are
proxied one relay per request (``Connection: close`` to the guest; the response is parsed with h11 and streamed
back); WebSocket upgrades are proxied message by message. While nothing listens on the port yet, a request waits
up to ``AMBER_PREVIEW_CONNECT_WAIT_SECS`` (5 s) for it, then answers 502 naming the port.

Who gets through: a request carrying the machine's traffic access token or a preview token for that port
(``nullspace_token`` query parameter — answered with a redirect that moves it into a host-only cookie, so the
guest never sees it — the ``nullspace_preview`` cookie, or the ``X-Nullspace-Traffic-Access-Token`` header), or
an API key of the machine's namespace (``Authorization: Bearer``). No credential → 401; any other credential
(another namespace's key, another machine's token) → 404, as for every other cross-tenant request.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import h11
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amber.machines.errors import MachineProblem
from amber.machines.live import LiveMachine
from amber.machines.manager import MachineManager
from amber.store.keys import Caller
from amber.vm import AgentError, AsyncJob, VMError

HOST_RE = re.compile(r"^(\d{1,5})-(mch_[0-9a-z]+)\.", re.IGNORECASE)
TOKEN_PARAM = "nullspace_token"
COOKIE = "nullspace_preview"
TOKEN_HEADER = b"x-nullspace-traffic-access-token"
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
              b"transfer-encoding", b"upgrade", b"host"}

CallerFor = Callable[[str], Awaitable[Caller | None]]


def _server_port(request: Request) -> int:
    host = request.headers.get("host", "")
    _, _, port = host.rpartition(":")
    if port.isdigit() and "]" not in port:
        return int(port)
    return request.url.port or (443 if request.url.scheme == "https" else 80)


def preview_host(manager: MachineManager, request: Request, machine_id: str, port: int) -> str:
    return f"{port}-{machine_id}.{manager.settings.preview_domain}:{_server_port(request)}"


def _urls(manager: MachineManager, request: Request, machine_id: str, port: int) -> tuple[str, str, str, int]:
    host = preview_host(manager, request, machine_id, port)
    token, expires = manager.tokens.preview_token(machine_id, port)
    query = urllib.parse.urlencode({TOKEN_PARAM: token})
    scheme = "https" if request.url.scheme == "https" else "http"
    ws = "wss" if scheme == "https" else "ws"
    return host, f"{scheme}://{host}/?{query}", f"{ws}://{host}/?{query}", expires


def _ts(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_info(manager: MachineManager, request: Request, machine_id: str, port: int) -> dict[str, Any]:
    """GetHostResponse: the preview host of ``port`` and URLs carrying a preview token."""
    host, url, ws_url, expires = _urls(manager, request, machine_id, port)
    return {"host": host, "url": url, "websocket_url": ws_url, "access_token_expires_at": _ts(expires),
            "access_token_transport": "query"}


def preview_url(manager: MachineManager, request: Request, machine_id: str, port: int) -> dict[str, Any]:
    """PreviewUrlResponse: the same URLs, with the grant they stand for (signed, not stored)."""
    _, url, ws_url, expires = _urls(manager, request, machine_id, port)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    grant = {"id": f"pgr_{machine_id.removeprefix('mch_')}_{port}", "machine_id": machine_id, "port": port,
             "status": "active", "auth_mode": "direct", "bootstrap_transport": "query",
             "token_kinds": ["http_port", "websocket_port"], "principal_kind": "user", "issued_at": now,
             "expires_at": _ts(expires), "use_count": 0, "http_request_count": 0, "websocket_connection_count": 0,
             "bytes_in_count": 0, "bytes_out_count": 0, "created_at": now, "updated_at": now}
    return {"grant": grant, "url": url, "websocket_url": ws_url, "access_token_expires_at": _ts(expires),
            "access_token_transport": "query"}


# ---- the proxy -------------------------------------------------------------------------------------------------


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers", [])}


def _cookie(headers: dict[bytes, bytes]) -> str | None:
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


async def _plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class PreviewProxyMiddleware:
    """Serves preview hosts; every other request goes on to the API."""

    def __init__(self, app: ASGIApp, *, manager: Callable[[], MachineManager | None], caller_for: CallerFor) -> None:
        self.app = app
        self.manager = manager
        self.caller_for = caller_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        match = HOST_RE.match(headers.get(b"host", b"").decode("latin-1"))
        manager = self.manager()
        if match is None or manager is None:
            await self.app(scope, receive, send)
            return
        port, machine_id = int(match.group(1)), match.group(2).lower()
        if not 1 <= port <= 65535:
            await self._refuse(scope, send, 404, "no such preview host")
            return
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        from_query = (query.get(TOKEN_PARAM) or [None])[0]
        allowed = await self._allowed(manager, headers, from_query, machine_id, port)
        if allowed is None:
            await self._refuse(scope, send, 401, "this preview needs a token: open the URL from get_url()/"
                                                 "get_preview_url(), or send the machine's traffic access token")
            return
        if not allowed:
            await self._refuse(scope, send, 404, f"machine {machine_id} not found")
            return
        if from_query and scope["type"] == "http":
            await self._move_token_to_cookie(scope, send, query, from_query)
            return
        try:
            owner = Caller(key_id="preview", namespace_id=await manager.namespace_of(machine_id) or "",
                           namespace_slug="")
            live = await manager.live_for(owner, machine_id)
        except MachineProblem as exc:
            await self._refuse(scope, send, exc.status, exc.message)
            return
        wait = manager.settings.preview_connect_wait_secs
        if scope["type"] == "websocket":
            await _proxy_websocket(live, port, scope, receive, send, wait)
        else:
            await _proxy_http(live, port, scope, receive, send, wait)

    async def _allowed(self, manager: MachineManager, headers: dict[bytes, bytes], from_query: str | None,
                       machine_id: str, port: int) -> bool | None:
        """True: let it through; False: a credential that does not open this machine; None: no credential."""
        tokens = [t for t in (from_query, _cookie(headers), headers.get(TOKEN_HEADER, b"").decode("latin-1")) if t]
        if any(manager.tokens.opens(t, machine_id, port) for t in tokens):
            return True
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            caller = await self.caller_for(key.strip())
            return caller is not None and caller.namespace_id == await manager.namespace_of(machine_id)
        return False if tokens else None

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, text: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.http.response.start", "status": status,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "websocket.http.response.body", "body": text.encode()})
            return
        await _plain(send, status, text + "\n")

    @staticmethod
    async def _move_token_to_cookie(scope: Scope, send: Send, query: dict[str, list[str]], token: str) -> None:
        rest = {k: v for k, v in query.items() if k != TOKEN_PARAM}
        location = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if rest:
            location += "?" + urllib.parse.urlencode(rest, doseq=True)
        cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax"
        await send({"type": "http.response.start", "status": 302, "headers": [
            (b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1")),
            (b"cache-control", b"no-store"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


def _request_head(scope: Scope, headers: dict[bytes, bytes], port: int) -> bytes:
    path = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        query = urllib.parse.parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        rest = [(k, v) for k, v in query if k != TOKEN_PARAM]
        if rest:
            path += b"?" + urllib.parse.urlencode(rest).encode("latin-1")
    lines = [b"%s %s HTTP/1.1" % (scope["method"].encode(), path), b"Host: 127.0.0.1:%d" % port]
    for name, value in scope.get("headers", []):
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in (b"content-length", TOKEN_HEADER) or (
                lname == b"authorization"):
            continue
        if lname == b"cookie":
            kept = "; ".join(p.strip() for p in value.decode("latin-1").split(";")
                             if p.strip() and not p.strip().startswith(COOKIE + "="))
            if not kept:
                continue
            value = kept.encode("latin-1")
        lines.append(name + b": " + value)
    if b"content-length" in headers:
        lines.append(b"Content-Length: " + headers[b"content-length"])
    elif scope["method"] not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(b"Transfer-Encoding: chunked")
    lines.append(b"Connection: close")
    client = scope.get("client")
    if client:
        lines.append(b"X-Forwarded-For: " + str(client[0]).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _open_relay(live: LiveMachine, port: int, wait_secs: float) -> AsyncJob | str:
    """A relay to ``port``; while nothing listens there yet, retried for up to ``wait_secs`` (a service started a
    moment ago, as a URL printed right after ``commands.run(…, background=True)`` is opened, gets that long)."""
    deadline = time.monotonic() + wait_secs
    delay = 0.05
    while True:
        try:
            return await AsyncJob.relay(live.agent, port)
        except AgentError:
            if time.monotonic() + delay > deadline:
                return f"nothing accepts connections on port {port} in machine {live.id}"
        except VMError:
            return f"machine {live.id} is not answering"
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def _proxy_http(live: LiveMachine, port: int, scope: Scope, receive: Receive, send: Send,
                      wait_secs: float) -> None:
    live.touch()
    relay = await _open_relay(live, port, wait_secs)
    if isinstance(relay, str):
        await _plain(send, 502, relay + "\n")
        return
    headers = _headers(scope)
    chunked = b"content-length" not in headers and scope["method"] not in ("GET", "HEAD", "DELETE", "OPTIONS")

    async def upload() -> None:
        await relay.send_stdin(_request_head(scope, headers, port))
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            if body:
                await relay.send_stdin(b"%x\r\n%s\r\n" % (len(body), body) if chunked else body)
            if not message.get("more_body"):
                break
        if chunked:
            await relay.send_stdin(b"0\r\n\r\n")

    uploader = asyncio.create_task(upload())
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method=scope["method"], target="/", headers=[("Host", "guest")]))
    parser.send(h11.EndOfMessage())
    started = False
    try:
        async for chunk in relay.output():
            parser.receive_data(chunk.data)
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    out = [(k, v) for k, v in event.headers if k.lower() not in HOP_BY_HOP]
                    await send({"type": "http.response.start", "status": event.status_code, "headers": out})
                    started = True
                elif isinstance(event, h11.Data):
                    live.touch()
                    await send({"type": "http.response.body", "body": bytes(event.data), "more_body": True})
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    await send({"type": "http.response.body", "body": b""})
                    return
        parser.receive_data(b"")
        event = parser.next_event()
        if started:
            await send({"type": "http.response.body", "body": b""})
        else:
            await _plain(send, 502, f"the service on port {port} closed the connection without answering\n")
    except h11.RemoteProtocolError as exc:
        if started:
            await send({"type": "http.response.body", "body": b""})
        else:
            await _plain(send, 502, f"the service on port {port} answered something that is not HTTP/1.1: {exc}\n")
    finally:
        uploader.cancel()
        with contextlib.suppress(BaseException):
            await uploader
        with contextlib.suppress(Exception):
            relay.close_stdin()


async def _proxy_websocket(live: LiveMachine, port: int, scope: Scope, receive: Receive, send: Send,
                           wait_secs: float) -> None:
    """A WebSocket to the guest port, message by message (the handshake with the guest is done here)."""
    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.uri import parse_uri

    live.touch()
    relay = await _open_relay(live, port, wait_secs)
    if isinstance(relay, str):
        await PreviewProxyMiddleware._refuse(scope, send, 502, relay)
        return
    path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
    protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}{path}"))
    handshake = protocol.connect()
    protocol.send_request(handshake)
    await relay.send_stdin(b"".join(protocol.data_to_send()))
    output = relay.output().__aiter__()
    while protocol.handshake_exc is None and getattr(protocol, "response", None) is None:
        try:
            chunk = await output.__anext__()
        except StopAsyncIteration:
            break
        protocol.receive_data(chunk.data)
    if getattr(protocol, "response", None) is None or protocol.handshake_exc is not None:
        await PreviewProxyMiddleware._refuse(scope, send, 502, f"the service on port {port} refused the WebSocket")
        relay.close_stdin()
        return
    first = await receive()
    if first["type"] != "websocket.connect":
        relay.close_stdin()
        return
    await send({"type": "websocket.accept"})

    async def client_to_guest() -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "websocket.disconnect":
                protocol.send_close()
            elif message.get("bytes") is not None:
                protocol.send_binary(message["bytes"])
            else:
                protocol.send_text((message.get("text") or "").encode())
            for data in protocol.data_to_send():
                if data:
                    await relay.send_stdin(data)
            live.touch()
            if message["type"] == "websocket.disconnect":
                relay.close_stdin()
                return

    async def guest_to_client() -> None:
        async for chunk in output:
            protocol.receive_data(chunk.data)
            for event in protocol.events_received():
                if not isinstance(event, Frame):
                    continue
                if event.opcode == Opcode.TEXT:
                    await send({"type": "websocket.send", "text": bytes(event.data).decode()})
                elif event.opcode == Opcode.BINARY:
                    await send({"type": "websocket.send", "bytes": bytes(event.data)})
            for data in protocol.data_to_send():
                if data:
                    await relay.send_stdin(data)
            live.touch()
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": 1000})

    tasks = [asyncio.create_task(client_to_guest()), asyncio.create_task(guest_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            relay.close_stdin()
