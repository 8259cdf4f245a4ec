"""A BuildKit session served by Amber for one build: secrets, registry credentials and the tar output.

dockerd upgrades ``POST /session`` to h2c and then acts as the gRPC *client* on that connection, calling back
the methods we announced. Two threads pump the hijacked connection's bytes (kernel-side ``splice``) to a
grpcio server on a unix socket in root-only ``/run/amber/bk-sessions``, which answers with generic handlers
(no generated code; see ``wire.py``).

Guarantees: secrets and credentials live only in this object's memory and are handed to dockerd only when it
asks over the session; nothing is written to disk except the unix socket file, which is removed on exit.
Unknown secret ids get NOT_FOUND; unknown registry hosts get empty (anonymous) credentials.
Limits: no FileSync (the context is uploaded as a tar), no SSH forwarding, no ``Auth/FetchToken`` (BuildKit
then falls back to ``Auth/Credentials``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets as secrets_module
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from pathlib import Path
from types import TracebackType

import grpc

from amber.buildkit import wire
from amber.buildkit.daemon import ENGINE_API_VERSION
from amber.contract.images import canonical_host
from amber.oci.credentials import BasicCredentials

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
GET_SECRET = "/moby.buildkit.secrets.v1.Secrets/GetSecret"
CREDENTIALS = "/moby.filesync.v1.Auth/Credentials"
FILE_SEND = "/moby.filesync.v1.FileSend/DiffCopy"
SOCKET_DIR = Path("/run/amber/bk-sessions")  # root-only; build containers never see the host's /run


RegistryCredential = BasicCredentials  # username + password (or token) for one registry host; memory only


def credential_host_key(host: str) -> str:
    """The key a registry host maps to in a credentials map: lower case, no scheme or path, and Docker Hub's
    several names (``registry-1.docker.io`` is what BuildKit asks for) as ``docker.io``."""
    return canonical_host(host)


TarChunkSink = Callable[[bytes | memoryview], None]


class SessionError(RuntimeError):
    """The session could not be attached to dockerd."""


def _splice_pump(source: socket.socket, destination: socket.socket) -> None:
    """Copy one direction of the session until EOF, kernel-side (``splice`` through a pipe, no GIL work per
    byte): a 200 MB tar export otherwise spends most of its time in Python."""
    read_end, write_end = os.pipe()
    try:
        while True:
            moved = os.splice(source.fileno(), write_end, 1 << 20)
            if moved == 0:
                break
            while moved:
                moved -= os.splice(read_end, destination.fileno(), moved)
    except OSError:
        pass
    finally:
        os.close(read_end)
        os.close(write_end)
        with contextlib.suppress(OSError):
            destination.shutdown(socket.SHUT_WR)


class _Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpcio ships no type stubs
    """Answers dockerd's calls; runs in grpcio's thread pool."""

    def __init__(self, session: BuildSession) -> None:
        self._session = session

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method == HEALTH_CHECK:
            return grpc.unary_unary_rpc_method_handler(self._health)
        if method == GET_SECRET:
            return grpc.unary_unary_rpc_method_handler(self._get_secret)
        if method == CREDENTIALS:
            return grpc.unary_unary_rpc_method_handler(self._credentials)
        if method == FILE_SEND and self._session.tar_sink is not None:
            return grpc.stream_stream_rpc_method_handler(self._diff_copy)
        return None

    def _health(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return wire.encode_varint(1 << 3 | wire.VARINT) + wire.encode_varint(1)  # status = SERVING

    def _get_secret(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        secret_id = wire.decode(request).string(1)
        value = self._session.secrets.get(secret_id)
        if value is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"secret {secret_id} not found")  # raises
            return b""
        return wire.encode_bytes(1, value.encode())

    def _credentials(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        host = wire.decode(request).string(1)
        credential = self._session.credentials.get(credential_host_key(host))
        if credential is None:
            return b""  # anonymous
        return wire.encode_string(1, credential.username) + wire.encode_string(2, credential.password)

    def _diff_copy(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        sink = self._session.tar_sink
        assert sink is not None
        try:
            for message in requests:
                sink(wire.single_bytes_field(message, 1))
        except BrokenPipeError:
            context.abort(grpc.StatusCode.ABORTED, "the receiver of the build output stopped reading")
        self._session.tar_finished.set()
        return iter(())


class BuildSession:
    """Async context manager: attaches a session to dockerd and serves it until exit.

    ``session_id`` goes into ``POST /build?session=…``. ``tar_sink`` (if given) receives the bytes of the
    ``outputs=[{"Type":"tar"}]`` export in order, from a grpcio worker thread.
    """

    def __init__(
        self,
        *,
        docker_socket: Path,
        secrets: Mapping[str, str] | None = None,
        credentials: Mapping[str, RegistryCredential] | None = None,
        tar_sink: TarChunkSink | None = None,
    ) -> None:
        self.docker_socket = docker_socket
        self.secrets = dict(secrets or {})
        self.credentials = {credential_host_key(h): c for h, c in (credentials or {}).items()}
        self.tar_sink = tar_sink
        self.session_id = secrets_module.token_hex(16)
        self.tar_finished = threading.Event()
        # Not in the build's staging dir: unix socket paths max out at 108 bytes. Not abstract either: a RUN
        # step with host networking could reach an abstract socket and ask it for this build's secrets.
        self._grpc_socket = SOCKET_DIR / f"{self.session_id[:20]}.sock"
        self._server: grpc.Server | None = None
        self._sockets: list[socket.socket] = []
        self._pumps: list[threading.Thread] = []

    def _methods(self) -> list[str]:
        methods = [HEALTH_CHECK, GET_SECRET, CREDENTIALS]
        if self.tar_sink is not None:
            methods.append(FILE_SEND)
        return methods

    async def __aenter__(self) -> BuildSession:
        SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        os.chmod(SOCKET_DIR, 0o700)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="amber-bk-session"),
            handlers=[_Handlers(self)],
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
        )
        server.add_insecure_port(f"unix:{self._grpc_socket}")
        server.start()
        self._server = server
        try:
            daemon, leftover = await asyncio.to_thread(self._hijack)
            self._sockets.append(daemon)
            local = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sockets.append(local)
            await asyncio.to_thread(local.connect, str(self._grpc_socket))
            if leftover:
                local.sendall(leftover)
        except BaseException:
            await self._close()
            raise
        for source, destination in ((daemon, local), (local, daemon)):
            pump = threading.Thread(target=_splice_pump, args=(source, destination), daemon=True, name="amber-bk-pump")
            pump.start()
            self._pumps.append(pump)
        # No need to wait for dockerd's first health check (about 1 s in): a build that names this session
        # waits in dockerd until the session is registered, which happens as soon as the upgrade completed.
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for pump in self._pumps:
            await asyncio.to_thread(pump.join, 5)
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._pumps.clear()
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(lambda: server.stop(grace=1).wait())
        with contextlib.suppress(FileNotFoundError):
            self._grpc_socket.unlink()
        self.secrets.clear()
        self.credentials.clear()

    def _hijack(self) -> tuple[socket.socket, bytes]:
        """``POST /session`` with ``Upgrade: h2c``; returns the upgraded socket and bytes read past the headers."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(10)
            sock.connect(str(self.docker_socket))
            headers = [
                f"POST /{ENGINE_API_VERSION}/session HTTP/1.1",
                "Host: docker",
                "Upgrade: h2c",
                "Connection: Upgrade",
                "Content-Length: 0",
                f"X-Docker-Expose-Session-Uuid: {self.session_id}",
                "X-Docker-Expose-Session-Name: amber",
                f"X-Docker-Expose-Session-Sharedkey: {secrets_module.token_hex(16)}",
                *(f"X-Docker-Expose-Session-Grpc-Method: {m}" for m in self._methods()),
            ]
            sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    raise SessionError("dockerd closed the connection instead of accepting the BuildKit session")
                received += chunk
                if len(received) > 65536:
                    raise SessionError("dockerd sent an oversized answer to the session upgrade")
            head, _, leftover = received.partition(b"\r\n\r\n")
            status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            if " 101 " not in f"{status_line} ":
                raise SessionError(f"dockerd refused the BuildKit session: {status_line}")
            sock.settimeout(None)
            return sock, leftover
        except OSError as error:
            sock.close()
            raise SessionError(f"cannot attach a BuildKit session to dockerd: {error}") from error
        except BaseException:
            sock.close()
            raise
