"""Resolving and pulling from a real registry: auth modes, index choice, media types, the layer cache."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from amber.oci import BasicCredentials, LayerCache, pull, resolve
from amber.oci.errors import PlatformError, UnsupportedMediaTypeError
from amber.oci.manifest import Descriptor
from amber.oci.progress import ImportProgress
from tests.support.images import (
    Compression,
    ImageConfig,
    Layer,
    Platform,
    TarEntry,
    build_image,
    busybox_image,
    busybox_layer,
    push_image,
    push_index,
    tar_entries,
)
from tests.support.registry import Registry


def _creds(registry: Registry) -> BasicCredentials | None:
    return BasicCredentials(*registry.credentials) if registry.credentials else None


class _Recorder(ImportProgress):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    def phase(self, name: str) -> None:
        self.events.append(("phase", name, None))

    def layer_started(self, descriptor: Descriptor, *, cached: bool) -> None:
        self.events.append(("start", descriptor.digest, cached))

    def layer_advanced(self, descriptor: Descriptor, nbytes: int) -> None:
        self.events.append(("bytes", descriptor.digest, nbytes))

    def layer_finished(self, descriptor: Descriptor) -> None:
        self.events.append(("done", descriptor.digest, None))


@pytest.mark.parametrize("mode", ["registry_noauth", "registry_htpasswd", "registry_token"])
def test_pull_in_every_auth_mode_then_from_cache(mode: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    registry: Registry = request.getfixturevalue(mode)
    unique = Layer.from_tar(tar_entries([TarEntry(f"etc/{mode}", data=os.urandom(64))]), Compression.ZSTD)
    image = busybox_image(Compression.GZIP, extra_layers=[unique])
    repo = "private/app" if mode == "registry_token" else "team/app"
    digest = push_image(registry, repo, image, "v1")
    recorder = _Recorder()
    pulled = asyncio.run(pull(f"{registry.host}/{repo}:v1", cache=tmp_path / "cache", credentials=_creds(registry),
                              progress=recorder))
    assert pulled.resolved.manifest_digest == digest
    assert [layer.digest for layer in pulled.layers] == [layer.digest for layer in image.layers]
    for layer, blob in zip(pulled.layers, image.layers, strict=True):
        assert layer.path.read_bytes() == blob.data and not layer.cached
    assert pulled.downloaded_bytes == sum(layer.size for layer in image.layers)
    assert sum(e[2] for e in recorder.events if e[0] == "bytes") == pulled.downloaded_bytes  # type: ignore[misc]
    assert [e[1] for e in recorder.events if e[0] == "phase"] == ["resolve", "pull"]
    again = asyncio.run(pull(f"{registry.host}/{repo}@{digest}", cache=LayerCache(tmp_path / "cache"),
                             credentials=_creds(registry)))
    assert again.downloaded_bytes == 0 and all(layer.cached for layer in again.layers)
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_config_and_platform_of_resolved_image(registry_noauth: Registry) -> None:
    config = ImageConfig(user="app:staff", working_dir="/home/app", cmd=["/bin/sh", "-c", "sleep 1"],
                         exposed_ports=["8080/tcp"], labels={"a": "b"}, env=["PATH=/bin", "X=1"])
    digest = push_image(registry_noauth, "team/configured", busybox_image(config=config), "c1")
    resolved = asyncio.run(resolve(f"{registry_noauth.host}/team/configured:c1"))
    assert resolved.manifest_digest == digest and resolved.index_digest is None
    assert resolved.config.user == "app:staff" and resolved.config.working_dir == "/home/app"
    assert resolved.config.cmd == ("/bin/sh", "-c", "sleep 1") and resolved.config.env_map["X"] == "1"
    assert resolved.config.oci_metadata() == {"labels": {"a": "b"}, "exposed_ports": ["8080/tcp"]}
    assert str(resolved.platform) == "linux/amd64"
    assert str(resolved.pinned_reference).endswith(f"team/configured:c1@{digest}")


def _labelled(which: str, platform: Platform, layer: Layer) -> tuple:  # type: ignore[type-arg]
    image = build_image([layer], ImageConfig(platform=platform, labels={"which": which}))
    return image, platform


@pytest.mark.parametrize("docker_types", [False, True])
def test_index_choice_follows_r36(registry_noauth: Registry, docker_types: bool) -> None:
    layer = busybox_layer(docker_media_types=docker_types)
    entries = [
        _labelled("os-version", Platform("amd64", os_version="10.0.17763"), layer),
        _labelled("amd64", Platform("amd64"), layer),
        _labelled("amd64-v1", Platform("amd64", variant="v1"), layer),
        _labelled("arm64-v8", Platform("arm64", variant="v8"), layer),
    ]
    repo = f"team/multi-{int(docker_types)}"
    index_digest = push_index(registry_noauth, repo, entries, "m", docker_media_types=docker_types)
    ref = f"{registry_noauth.host}/{repo}:m"
    resolved = asyncio.run(resolve(ref))
    assert resolved.index_digest == index_digest
    assert resolved.config.labels["which"] == "amd64-v1" and resolved.manifest_digest == entries[2][0].digest
    arm = asyncio.run(resolve(ref, platform="linux/arm64"))
    assert arm.config.labels["which"] == "arm64-v8" and str(arm.platform) == "linux/arm64/v8"
    # What the pipeline does: re-resolve the pinned manifest with the platform it got.
    pinned = asyncio.run(resolve(arm.pinned_reference, platform=arm.platform))
    assert pinned.manifest_digest == arm.manifest_digest and pinned.index_digest is None
    fallback_digest = push_index(registry_noauth, repo, [entries[0], entries[1], entries[3]], "fallback")
    fallback = asyncio.run(resolve(f"{registry_noauth.host}/{repo}:fallback"))
    assert fallback.config.labels["which"] == "amd64" and fallback.index_digest == fallback_digest


def test_no_fitting_platform_lists_the_platforms_found(registry_noauth: Registry) -> None:
    layer = busybox_layer()
    entries = [
        _labelled("os-version", Platform("amd64", os_version="10.0.17763"), layer),
        _labelled("arm64-v8", Platform("arm64", variant="v8"), layer),
        _labelled("amd64-v3", Platform("amd64", variant="v3"), layer),
    ]
    push_index(registry_noauth, "team/noamd", entries, "x")
    with pytest.raises(PlatformError) as caught:
        asyncio.run(resolve(f"{registry_noauth.host}/team/noamd:x", platform="linux/amd64"))
    message = str(caught.value)
    assert "linux/amd64 (os.version 10.0.17763) [rejected: sets os.version 10.0.17763]" in message
    assert "linux/arm64/v8" in message and "linux/amd64/v3" in message


def test_single_manifest_for_another_architecture_is_refused(registry_noauth: Registry) -> None:
    image = build_image([busybox_layer()], ImageConfig(platform=Platform("arm64", variant="v8")))
    push_image(registry_noauth, "team/armonly", image, "a")
    with pytest.raises(PlatformError, match="image is for platform linux/arm64/v8, wanted linux/amd64"):
        asyncio.run(resolve(f"{registry_noauth.host}/team/armonly:a", platform="linux/amd64"))


def test_unsupported_layer_media_type_is_named(registry_noauth: Registry, tmp_path: Path) -> None:
    layer = Layer.from_tar(tar_entries([TarEntry("f")]), Compression.NONE,
                           media_type="application/vnd.oci.image.layer.v1.tar+bzip2")
    push_image(registry_noauth, "team/bzip", build_image([layer]), "b")
    with pytest.raises(UnsupportedMediaTypeError, match=r"application/vnd\.oci\.image\.layer\.v1\.tar\+bzip2"):
        asyncio.run(pull(f"{registry_noauth.host}/team/bzip:b", cache=tmp_path))
    assert not (tmp_path / "sha256").exists()


def test_artifact_manifest_is_not_an_image(registry_noauth: Registry) -> None:
    image = busybox_image()
    manifest = json.loads(image.manifest)
    manifest["config"]["mediaType"] = "application/vnd.example.thing+json"
    from tests.support.images import _Pusher, sha256_digest

    pusher = _Pusher(registry_noauth)
    try:
        for blob in (image.config, *[layer.data for layer in image.layers]):
            pusher.push_blob("team/artifact", blob)
        body = json.dumps(manifest).encode()
        pusher.push_manifest("team/artifact", "art", body, image.manifest_media_type)
    finally:
        pusher.close()
    assert sha256_digest(body)
    with pytest.raises(UnsupportedMediaTypeError, match="not a container image config"):
        asyncio.run(resolve(f"{registry_noauth.host}/team/artifact:art"))


def test_concurrent_pulls_of_one_image_download_each_layer_once(registry_noauth: Registry, tmp_path: Path) -> None:
    layer = Layer.from_tar(tar_entries([TarEntry("blob", data=os.urandom(2_000_000))]), Compression.NONE)
    image = busybox_image(extra_layers=[layer])
    push_image(registry_noauth, "team/concurrent", image, "c")
    ref = f"{registry_noauth.host}/team/concurrent:c"

    async def both() -> list[int]:
        pulls = await asyncio.gather(*(pull(ref, cache=tmp_path / "cache") for _ in range(3)))
        return [p.downloaded_bytes for p in pulls]

    downloaded = asyncio.run(both())
    assert sum(downloaded) == sum(la.size for la in image.layers)
