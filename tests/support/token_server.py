"""A small Docker-registry token server (the `auth.token` protocol of distribution 2.8) for the test suite.

It answers ``GET /token?service=…&scope=…`` (credentials by HTTP Basic) and the OAuth2 form
``POST /token`` (``grant_type=password``) that containerd/BuildKit use, and returns both ``token`` and
``access_token``. Tokens are ES256 JWTs whose header carries the libtrust ``kid`` of the signing key; the
registry trusts the self-signed certificate written by :meth:`TokenServer.write_certificate`.

Policy (enough for the tests, explicit so they can rely on it):
- known user + right password → every requested action (pull, push, delete) on every repository;
- wrong password or unknown user → 401 (the client must report wrong credentials);
- anonymous → ``pull`` only, and none at all on repositories under one of ``private_prefixes``.

Runs in a daemon thread of the test process; :meth:`stop` shuts it down. ``requests`` records every token
request (method, account, scopes, whether credentials were sent) so tests can check client behaviour.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The libtrust key id distribution matches against a JWT ``kid``: base32(sha256(SPKI DER)[:30]) in 4s."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered (for assertions in tests)."""

    method: str
    account: str | None
    scopes: tuple[str, ...]
    status: int


@dataclass
class TokenServer:
    """Issues registry bearer tokens. Construct, :meth:`start`, use ``realm``, then :meth:`stop`."""

    service: str = "amber-test-registry"
    issuer: str = "amber-test-token-issuer"
    users: Mapping[str, str] = field(default_factory=dict)
    private_prefixes: tuple[str, ...] = ("private/",)
    token_ttl_seconds: int = 300
    requests: list[TokenRequest] = field(default_factory=list)
    # Which reply fields carry the token: registries in the wild send either or both.
    token_fields: tuple[str, ...] = ("token", "access_token")

    def __post_init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._kid = libtrust_key_id(self._key.public_key())
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("token server is not running")
        return int(self._server.server_address[1])

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def write_certificate(self, path: Path) -> Path:
        """Write a self-signed certificate of the signing key (the registry's ``rootcertbundle``)."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self._key, hashes.SHA256())
        )
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    # -- policy ------------------------------------------------------------------------------------------
    def _granted(self, scope: str, account: str | None) -> dict[str, object] | None:
        parts = scope.split(":")
        if len(parts) < 3:
            return None
        kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
        if account is not None:
            allowed = [a for a in actions if a in ("pull", "push", "delete", "*")]
        elif kind == "repository" and not name.startswith(self.private_prefixes):
            allowed = [a for a in actions if a == "pull"]
        else:
            allowed = []
        return {"type": kind, "name": name, "actions": allowed}

    def issue(self, account: str | None, scopes: list[str]) -> dict[str, object]:
        now = int(time.time())
        access = [g for s in scopes if (g := self._granted(s, account)) is not None]
        claims = {
            "iss": self.issuer,
            "sub": account or "",
            "aud": self.service,
            "exp": now + self.token_ttl_seconds,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self._kid})
        issued = dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
        reply: dict[str, object] = {field: token for field in self.token_fields}
        return {**reply, "expires_in": self.token_ttl_seconds, "issued_at": issued}

    def add_user(self, username: str, password: str) -> None:
        """Accept another user (e.g. ``oauth2accesstoken`` with a token a test's fake IdP issued)."""
        with self._lock:
            self.users = {**self.users, username: password}

    def authenticate(self, username: str | None, password: str | None) -> tuple[bool, str | None]:
        """(ok, account): anonymous is ok with account None; a wrong password is not ok."""
        if username is None:
            return True, None
        return self.users.get(username) == password, username

    def record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _make_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: tests read `requests`
            return

        def _reply(self, status: int, body: Mapping[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _basic(self) -> tuple[str | None, str | None]:
            header = self.headers.get("Authorization", "")
            if not header.lower().startswith("basic "):
                return None, None
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return "", ""
            return user, password

        def _answer(self, method: str, username: str | None, password: str | None, scopes: list[str]) -> None:
            ok, account = server.authenticate(username, password)
            status = 200 if ok else 401
            server.record(TokenRequest(method, username, tuple(scopes), status))
            if not ok:
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]})
                return
            self._reply(200, server.issue(account, scopes))

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                self._reply(404, {"error": "not found"})
                return
            query = parse_qs(url.query)
            username, password = self._basic()
            self._answer("GET", username, password, query.get("scope", []))

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/token":
                self._reply(404, {"error": "not found"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            form = parse_qs(self.rfile.read(length).decode())
            grant = form.get("grant_type", [""])[0]
            if grant != "password":
                # containerd falls back to GET on 400/401/404 (a 501 would fail its build).
                self._reply(400, {"error": "unsupported_grant_type"})
                return
            scopes = [s for value in form.get("scope", []) for s in value.split(" ") if s]
            self._answer("POST", form.get("username", [None])[0], form.get("password", [None])[0], scopes)

    return Handler


@contextmanager
def running_token_server(
    users: Mapping[str, str], *, service: str = "amber-test-registry", token_ttl_seconds: int = 300
) -> Iterator[TokenServer]:
    """Start a token server for ``users`` on a free loopback port; stop it on exit."""
    server = TokenServer(service=service, users=dict(users), token_ttl_seconds=token_ttl_seconds)
    server.start()
    try:
        yield server
    finally:
        server.stop()
