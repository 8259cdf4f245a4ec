"""A thin asynchronous registry client (distribution API v2) on httpx.

Auth: anonymous, HTTP Basic, and Bearer tokens (the ``WWW-Authenticate`` challenge names the realm and
service; a token is requested per repository scope with GET, Basic-authenticated when credentials are
given, and ``token`` or ``access_token`` is accepted). A 401 on a request that carried a token refreshes the
token once. Plain HTTP is used only for loopback hosts and hosts listed in ``insecure_registries``; every
other registry (and token realm that would receive credentials) must be HTTPS.

Blobs are streamed to a file while hashed: never held whole in memory. Downloads check size and digest.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from amber.oci import media_types
from amber.oci.credentials import BasicCredentials
from amber.oci.errors import (
    DigestMismatchError,
    ImageNotFoundError,
    InsecureRegistryError,
    ManifestNotFoundError,
    RegistryAuthError,
    RegistryError,
    RepositoryNotFoundError,
    TruncatedDownloadError,
)
from amber.oci.manifest import Descriptor

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge:
    """Parse ``Bearer realm="…",service="…",scope="…"`` (or ``Basic realm="…"``)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in
              _CHALLENGE_PARAM.finditer(rest)}
    return Challenge(scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()})


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1, with or without a port."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def registry_scheme(host: str, insecure_registries: Collection[str] = ()) -> str:
    """``http`` for loopback or explicitly allowed hosts, ``https`` otherwise."""
    return "http" if is_loopback_host(host) or host in insecure_registries else "https"


@dataclass(frozen=True)
class FetchedManifest:
    body: bytes
    media_type: str
    digest: str


def _error_codes(response: httpx.Response) -> set[str]:
    try:
        errors = response.json().get("errors") or []
        return {str(e.get("code", "")) for e in errors if isinstance(e, dict)}
    except (ValueError, AttributeError):
        return set()


class RegistryClient:
    """One registry host, one set of credentials. Use as ``async with RegistryClient(host, …) as client``."""

    def __init__(
        self,
        host: str,
        *,
        api_host: str | None = None,
        credentials: BasicCredentials | None = None,
        insecure_registries: Collection[str] = (),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.host = host
        self._api_host = api_host or host
        self._credentials = credentials
        self._insecure = frozenset(insecure_registries)
        self._base = f"{registry_scheme(self._api_host, self._insecure)}://{self._api_host}"
        self._client = httpx.AsyncClient(
            timeout=_TIMEOUT, follow_redirects=True, transport=transport, headers={"User-Agent": "amber"}
        )
        self._basic = False
        self._bearer_challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- auth ----------------------------------------------------------------------------------------------
    def _auth_headers(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.monotonic():
            return {"Authorization": f"Bearer {token[0]}"}
        if self._basic and self._credentials is not None:
            pair = f"{self._credentials.username}:{self._credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    async def _fetch_token(self, challenge: Challenge, scope: str) -> None:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.host} sent a bearer challenge without a realm")
        realm_url = urlsplit(realm)
        plain_ok = realm_url.scheme == "http" and registry_scheme(realm_url.netloc, self._insecure) == "http"
        if realm_url.scheme not in ("http", "https") or (
            realm_url.scheme == "http" and not plain_ok and self._credentials is not None
        ):
            raise InsecureRegistryError(
                f"registry {self.host} names token realm {realm} over plain HTTP; refusing to send credentials "
                "to a non-loopback host that is not an allowed insecure registry"
            )
        params: dict[str, str] = {"scope": scope}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        auth: httpx.BasicAuth | None = None
        if self._credentials is not None:
            params["account"] = self._credentials.username
            auth = httpx.BasicAuth(self._credentials.username, self._credentials.password)
        try:
            response = await self._client.get(realm, params=params, auth=auth)
        except httpx.HTTPError as exc:
            raise RegistryError(f"cannot reach the token service of {self.host} at {realm}: {exc}") from None
        if response.status_code in (401, 403):
            if self._credentials is not None:
                raise RegistryAuthError(
                    f"registry {self.host} rejected the credentials for user {self._credentials.username!r} "
                    "(wrong username or password)"
                )
            raise RegistryAuthError(f"registry {self.host} refused an anonymous token")
        if response.status_code != 200:
            raise RegistryError(f"token service of {self.host} answered HTTP {response.status_code}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            expires_in = int(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            raise RegistryError(f"token service of {self.host} returned malformed JSON") from None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service of {self.host} returned no token")
        # Refresh a little early so a token never expires between our check and the registry's.
        self._tokens[scope] = (token, time.monotonic() + max(expires_in - 10, 1))

    async def _authenticate(self, response: httpx.Response, scope: str) -> None:
        header = response.headers.get("WWW-Authenticate", "")
        challenge = parse_challenge(header)
        if challenge.scheme == "basic":
            if self._credentials is None:
                raise RegistryAuthError(f"registry {self.host} requires authentication (HTTP Basic); no credentials")
            if self._basic:
                raise RegistryAuthError(
                    f"registry {self.host} rejected the credentials for user {self._credentials.username!r} "
                    "(wrong username or password)"
                )
            self._basic = True
            return
        if challenge.scheme == "bearer":
            self._bearer_challenge = challenge
            await self._fetch_token(challenge, scope)
            return
        raise RegistryAuthError(f"registry {self.host} requires an unsupported auth scheme {challenge.scheme!r}")

    async def _send(
        self, method: str, path: str, scope: str, *, headers: dict[str, str] | None = None, stream: bool = False
    ) -> httpx.Response:
        """Send with auth; authenticate after a 401 and retry once (a stale token is refreshed that way)."""
        url = f"{self._base}{path}"
        for attempt in range(2):
            request = self._client.build_request(method, url, headers={**(headers or {}), **self._auth_headers(scope)})
            try:
                response = await self._client.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise RegistryError(f"cannot reach registry {self.host} ({self._base}): {exc}") from None
            if response.status_code != 401:
                return response
            await response.aclose()
            if attempt == 1:
                break
            self._tokens.pop(scope, None)
            await self._authenticate(response, scope)
        repository = scope.split(":")[1] if scope.count(":") >= 2 else scope
        if self._basic and self._credentials is not None:
            raise RegistryAuthError(
                f"registry {self.host} rejected the credentials for user {self._credentials.username!r} "
                "(wrong username or password)"
            )
        if self._credentials is not None:
            raise RegistryAuthError(
                f"registry {self.host} denied user {self._credentials.username!r} pull access to {repository} "
                "(wrong credentials, or no access to this repository)"
            )
        raise RegistryAuthError(
            f"registry {self.host} requires authentication to pull {repository} "
            "(or the repository does not exist; registries do not tell anonymous clients)"
        )

    # -- API -----------------------------------------------------------------------------------------------
    async def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        """Fetch a manifest or index by tag or digest. A digest reference is verified against the bytes."""
        scope = f"repository:{repository}:pull"
        response = await self._send(
            "GET", f"/v2/{repository}/manifests/{reference}", scope,
            headers={"Accept": media_types.ACCEPT_MANIFESTS}, stream=True,
        )
        try:
            if response.status_code == 404:
                await response.aread()
                codes = _error_codes(response)
                if "NAME_UNKNOWN" in codes or await self._repository_missing(repository, scope):
                    raise RepositoryNotFoundError(f"repository {repository} not found on registry {self.host}")
                what = "digest" if reference.startswith("sha256:") else "tag"
                raise ManifestNotFoundError(
                    f"{what} {reference!r} not found in repository {repository} on registry {self.host}"
                )
            if response.status_code != 200:
                await response.aread()
                raise RegistryError(
                    f"registry {self.host} answered HTTP {response.status_code} for manifest "
                    f"{repository}:{reference}: {response.text[:200]}"
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise RegistryError(f"manifest {repository}:{reference} is larger than {MAX_MANIFEST_BYTES} bytes")
        finally:
            await response.aclose()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatchError(
                f"manifest {repository}@{reference} from {self.host} has digest {digest} (tampered or corrupted)"
            )
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return FetchedManifest(bytes(body), content_type, digest)

    async def _repository_missing(self, repository: str, scope: str) -> bool:
        """Tell a missing repository from a missing tag (distribution answers MANIFEST_UNKNOWN for both)."""
        response = await self._send("GET", f"/v2/{repository}/tags/list?n=1", scope)
        return response.status_code == 404 and "NAME_UNKNOWN" in _error_codes(response)

    async def get_blob_bytes(self, repository: str, descriptor: Descriptor, max_size: int = MAX_CONFIG_BYTES) -> bytes:
        """A small blob (the image config) in memory, size- and digest-checked."""
        if descriptor.size > max_size:
            raise RegistryError(f"blob {descriptor.digest} is {descriptor.size} bytes; at most {max_size} allowed")
        chunks: list[bytes] = []
        await self._stream_blob(repository, descriptor, chunks.append)
        return b"".join(chunks)

    async def download_blob(
        self, repository: str, descriptor: Descriptor, destination: Path, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Stream a blob into ``destination`` (created/truncated), checking size and digest on the way.

        Disk writes and hashing run in a worker thread per chunk. On any error the file is left for the
        caller to delete; it is complete and verified only when this returns.
        """
        with destination.open("wb") as out:

            def write(chunk: bytes) -> None:
                out.write(chunk)

            await self._stream_blob(repository, descriptor, write, on_bytes, threaded=True)

    async def _stream_blob(
        self,
        repository: str,
        descriptor: Descriptor,
        sink: Callable[[bytes], Any],
        on_bytes: Callable[[int], None] | None = None,
        *,
        threaded: bool = False,
    ) -> None:
        scope = f"repository:{repository}:pull"
        response = await self._send("GET", f"/v2/{repository}/blobs/{descriptor.digest}", scope, stream=True)
        hasher = hashlib.sha256()
        received = 0

        def consume(chunk: bytes) -> None:
            hasher.update(chunk)
            sink(chunk)

        try:
            if response.status_code == 404:
                raise ImageNotFoundError(f"blob {descriptor.digest} not found in {repository} on registry {self.host}")
            if response.status_code != 200:
                raise RegistryError(
                    f"registry {self.host} answered HTTP {response.status_code} for blob {descriptor.digest}"
                )
            try:
                async for chunk in response.aiter_bytes(_CHUNK):
                    received += len(chunk)
                    if received > descriptor.size:
                        raise DigestMismatchError(
                            f"blob {descriptor.digest} from {self.host} is larger than the {descriptor.size} bytes "
                            "its manifest declares (tampered or corrupted)"
                        )
                    if threaded:
                        await asyncio.to_thread(consume, chunk)
                    else:
                        consume(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
            except httpx.HTTPError as exc:
                raise TruncatedDownloadError(
                    f"download of blob {descriptor.digest} from {self.host} broke off after {received} of "
                    f"{descriptor.size} bytes: {type(exc).__name__}"
                ) from None
        finally:
            await response.aclose()
        if received < descriptor.size:
            raise TruncatedDownloadError(
                f"download of blob {descriptor.digest} from {self.host} ended after {received} of "
                f"{descriptor.size} bytes (truncated)"
            )
        actual = "sha256:" + hasher.hexdigest()
        if actual != descriptor.digest:
            raise DigestMismatchError(
                f"blob from {self.host}/{repository} should have digest {descriptor.digest} but has {actual} "
                "(tampered or corrupted)"
            )
