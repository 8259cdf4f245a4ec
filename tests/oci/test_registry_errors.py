"""Failures a user must be able to tell apart: wrong credentials, missing repo, missing tag, tampered blob,
truncated download; and the auth rules (token refresh, plain HTTP only on loopback)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from amber.contract.images import parse_reference
from amber.oci import BasicCredentials, pull, resolve
from amber.oci.errors import (
    DigestMismatchError,
    ImageImportError,
    InsecureRegistryError,
    ManifestNotFoundError,
    RegistryAuthError,
    RepositoryNotFoundError,
    TruncatedDownloadError,
)
from amber.oci.registry import Challenge, RegistryClient, is_loopback_host, parse_challenge, registry_scheme
from tests.support.images import (
    Compression,
    Layer,
    TarEntry,
    busybox_image,
    push_busybox_image,
    push_image,
    tar_entries,
)
from tests.support.registry import Registry

WRONG = "definitely-wrong-password-1234"


def _error(coro: object) -> ImageImportError:
    with pytest.raises(ImageImportError) as caught:
        asyncio.run(coro)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize("mode", ["registry_htpasswd", "registry_token"])
def test_wrong_credentials(mode: str, request: pytest.FixtureRequest) -> None:
    registry: Registry = request.getfixturevalue(mode)
    ref = push_busybox_image(registry, repo="private/wrongcreds")
    assert registry.username is not None
    error = _error(resolve(ref, credentials=BasicCredentials(registry.username, WRONG)))
    assert type(error) is RegistryAuthError
    assert "wrong username or password" in error.message and registry.username in error.message
    assert WRONG not in str(error) and WRONG not in repr(error)


def test_missing_credentials(registry_htpasswd: Registry, registry_token: Registry) -> None:
    basic = _error(resolve(push_busybox_image(registry_htpasswd, repo="private/nocreds")))
    assert type(basic) is RegistryAuthError and "requires authentication" in basic.message
    token = _error(resolve(push_busybox_image(registry_token, repo="private/nocreds")))
    assert type(token) is RegistryAuthError and "requires authentication to pull private/nocreds" in token.message


@pytest.mark.parametrize("mode", ["registry_noauth", "registry_token"])
def test_missing_repository_and_tag(mode: str, request: pytest.FixtureRequest) -> None:
    registry: Registry = request.getfixturevalue(mode)
    creds = BasicCredentials(*registry.credentials) if registry.credentials else None
    repo_error = _error(resolve(f"{registry.host}/team/no-such-repo:latest", credentials=creds))
    assert type(repo_error) is RepositoryNotFoundError and "team/no-such-repo" in repo_error.message
    ref = push_busybox_image(registry, repo="team/has-tags", tag="exists")
    tag_error = _error(resolve(ref.replace(":exists", ":missing"), credentials=creds))
    assert type(tag_error) is ManifestNotFoundError and "tag 'missing'" in tag_error.message
    digest_error = _error(resolve(ref.replace(":exists", "@sha256:" + "0" * 64), credentials=creds))
    assert type(digest_error) is ManifestNotFoundError and "sha256:" + "0" * 64 in digest_error.message


def _unique_image_ref(registry: Registry, repo: str) -> tuple[str, Layer]:
    layer = Layer.from_tar(tar_entries([TarEntry("data", data=os.urandom(300_000))]), Compression.NONE)
    push_image(registry, repo, busybox_image(extra_layers=[layer]), "t")
    return f"{registry.host}/{repo}:t", layer


def _cache_is_clean(cache: Path, layer: Layer) -> None:
    assert not (cache / "sha256" / layer.digest.removeprefix("sha256:")).exists()
    assert not list((cache / "tmp").iterdir())


def test_tampered_blob_is_a_digest_mismatch(registry_noauth: Registry, tmp_path: Path) -> None:
    ref, layer = _unique_image_ref(registry_noauth, "team/tampered")
    blob = registry_noauth.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF  # same size, one flipped byte
    blob.write_bytes(bytes(data))
    error = _error(pull(ref, cache=tmp_path))
    assert type(error) is DigestMismatchError and layer.digest in error.message
    _cache_is_clean(tmp_path, layer)


def test_truncated_download(registry_noauth: Registry, tmp_path: Path) -> None:
    ref, layer = _unique_image_ref(registry_noauth, "team/truncated")
    blob = registry_noauth.blob_path(layer.digest)
    with blob.open("r+b") as f:
        f.truncate(layer.size // 2)
    error = _error(pull(ref, cache=tmp_path))
    assert type(error) is TruncatedDownloadError and layer.digest in error.message
    assert f"of {layer.size} bytes" in error.message
    _cache_is_clean(tmp_path, layer)


def test_the_five_failures_are_distinct_classes() -> None:
    classes = {RegistryAuthError, RepositoryNotFoundError, ManifestNotFoundError, DigestMismatchError,
               TruncatedDownloadError}
    assert len(classes) == 5
    for a in classes:
        for b in classes - {a}:
            assert not issubclass(a, b)


def test_expired_or_revoked_token_is_refreshed_on_401(registry_token: Registry) -> None:
    ref = parse_reference(push_busybox_image(registry_token, repo="team/refresh"))
    server = registry_token.token_server
    assert server is not None

    async def scenario() -> int:
        async with RegistryClient(ref.registry) as client:
            await client.get_manifest(ref.repository, "latest")
            before = len(server.requests)
            # The registry now rejects our token (as after expiry): the client must fetch a new one once.
            client._tokens = {k: ("not-a-valid-token", v[1]) for k, v in client._tokens.items()}
            await client.get_manifest(ref.repository, "latest")
            return len(server.requests) - before

    assert asyncio.run(scenario()) == 1


def test_challenge_parsing() -> None:
    header = 'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"'
    assert parse_challenge(header) == Challenge(
        "bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                   "scope": "repository:a/b:pull"})
    assert parse_challenge('Basic realm="x"') == Challenge("basic", {"realm": "x"})


@pytest.mark.parametrize(
    ("host", "scheme"),
    [("127.0.0.1:5000", "http"), ("localhost:5000", "http"), ("[::1]:5000", "http"), ("127.1.2.3", "http"),
     ("registry.example:5000", "https"), ("10.0.0.1:5000", "https"), ("docker.io", "https")],
)
def test_plain_http_only_for_loopback(host: str, scheme: str) -> None:
    assert registry_scheme(host) == scheme
    assert is_loopback_host(host) == (scheme == "http")
    assert registry_scheme(host, insecure_registries={host}) == "http"


def test_token_realm_over_plain_http_to_a_remote_host_is_refused() -> None:
    async def scenario() -> None:
        async with RegistryClient("127.0.0.1:1", credentials=BasicCredentials("u", "secret-pw")) as client:
            await client._fetch_token(Challenge("bearer", {"realm": "http://auth.example/token"}), "repository:a:pull")

    with pytest.raises(InsecureRegistryError, match="plain HTTP") as caught:
        asyncio.run(scenario())
    assert "secret-pw" not in str(caught.value)


@pytest.mark.parametrize("fields", [("token",), ("access_token",)])
def test_token_or_access_token_is_accepted(registry_token: Registry, fields: tuple[str, ...]) -> None:
    ref = push_busybox_image(registry_token, repo="private/tokenfield")
    server = registry_token.token_server
    assert server is not None and registry_token.credentials is not None
    server.token_fields = fields
    try:
        resolved = asyncio.run(resolve(ref, credentials=BasicCredentials(*registry_token.credentials)))
    finally:
        server.token_fields = ("token", "access_token")
    assert resolved.manifest_digest.startswith("sha256:")
