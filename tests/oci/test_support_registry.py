"""The test registries and the image builder work against the real docker-registry in all three modes."""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest

from tests.support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    Compression,
    Platform,
    busybox_image,
    push_busybox_image,
    push_index,
)
from tests.support.registry import Registry, RegistryMode, running_registry


def _fetch_manifest(registry: Registry, repo: str, reference: str, accept: str) -> httpx.Response:
    """Fetch a manifest the long way (Basic or Bearer) to check what the helpers pushed."""
    url = f"{registry.url}/v2/{repo}/manifests/{reference}"
    response = httpx.get(url, headers={"Accept": accept})
    if response.status_code == 401:
        assert registry.credentials is not None
        challenge = response.headers["WWW-Authenticate"]
        if challenge.startswith("Basic"):
            return httpx.get(url, headers={"Accept": accept}, auth=registry.credentials)
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        token = httpx.get(
            params["realm"],
            params={"service": params["service"], "scope": f"repository:{repo}:pull"},
            auth=registry.credentials,
        ).json()["access_token"]
        return httpx.get(url, headers={"Accept": accept, "Authorization": f"Bearer {token}"})
    return response


@pytest.mark.parametrize("mode", ["registry_noauth", "registry_htpasswd", "registry_token"])
def test_push_busybox_image_in_every_mode(mode: str, request: pytest.FixtureRequest) -> None:
    registry: Registry = request.getfixturevalue(mode)
    ref = push_busybox_image(registry, repo="support/busybox", tag="v1")
    assert ref == f"{registry.host}/support/busybox:v1"
    response = _fetch_manifest(registry, "support/busybox", "v1", OCI_MANIFEST)
    assert response.status_code == 200, response.text
    manifest = response.json()
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert response.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(response.content).hexdigest()


def test_registry_requires_auth_and_is_stopped_by_pid() -> None:
    with running_registry(RegistryMode.HTPASSWD) as registry:
        pid = registry.pid
        assert httpx.get(f"{registry.url}/v2/").status_code == 401
        assert httpx.get(f"{registry.url}/v2/", auth=registry.credentials).status_code == 200
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_token_server_answers_get_and_post(registry_token: Registry) -> None:
    server = registry_token.token_server
    assert server is not None
    assert registry_token.credentials is not None
    user, password = registry_token.credentials
    posted = httpx.post(
        server.realm,
        data={
            "grant_type": "password",
            "username": user,
            "password": password,
            "service": server.service,
            "scope": "repository:x/y:pull",
            "client_id": "test",
        },
    )
    assert posted.status_code == 200 and posted.json()["token"] == posted.json()["access_token"]
    wrong = httpx.get(
        server.realm, params={"service": server.service, "scope": "repository:x/y:pull"}, auth=(user, "wrong")
    )
    assert wrong.status_code == 401


def test_push_index_with_zstd_and_raw(registry_noauth: Registry) -> None:
    amd = busybox_image(Compression.ZSTD)
    raw = busybox_image(Compression.NONE)
    digest = push_index(
        registry_noauth, "support/multi", [(amd, Platform("amd64")), (raw, Platform("arm64", variant="v8"))]
    )
    response = _fetch_manifest(registry_noauth, "support/multi", digest, OCI_INDEX)
    assert response.status_code == 200
    platforms = [m["platform"] for m in response.json()["manifests"]]
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
