"""Manifests and indexes (OCI and Docker v2 schema 2) parsed into typed values. Pure functions.

Docker v2 schema 1 and unknown manifest types are rejected with :class:`UnsupportedMediaTypeError`.
A manifest without ``mediaType`` (allowed by OCI) is classified by its shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from amber.oci import media_types
from amber.oci.errors import RegistryError, UnsupportedMediaTypeError
from amber.oci.platform import Platform

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob it references."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None

    @property
    def short_digest(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]


def _descriptor(data: Any, where: str) -> Descriptor:
    if not isinstance(data, dict):
        raise RegistryError(f"malformed {where}: not an object")
    digest, size, media_type = data.get("digest"), data.get("size"), data.get("mediaType")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise UnsupportedMediaTypeError(f"{where} has an unsupported digest {digest!r} (only sha256 is supported)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"malformed {where}: size {size!r} is not a non-negative integer")
    if not isinstance(media_type, str):
        raise RegistryError(f"malformed {where}: mediaType missing")
    platform = Platform.from_json(data["platform"]) if isinstance(data.get("platform"), dict) else None
    return Descriptor(media_type, digest, size, platform)


def parse_manifest(body: bytes, content_type: str | None) -> ImageManifest | ImageIndex:
    """Parse a manifest or index body; ``content_type`` is the registry's Content-Type header."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RegistryError("manifest is not a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise RegistryError("malformed manifest: 'mediaType' is not a string")
    media_type = declared or (content_type or "").split(";")[0].strip()
    if not media_type or media_type in ("application/json", "application/octet-stream"):
        media_type = media_types.OCI_INDEX if "manifests" in doc else media_types.OCI_MANIFEST
    if doc.get("schemaVersion") == 1 or "signed" in media_type or "v1+prettyjws" in media_type:
        raise UnsupportedMediaTypeError(
            f"manifest media type {media_type!r} (Docker schema 1) is not supported; re-push the image as schema 2"
        )
    if media_type in media_types.INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise RegistryError("malformed image index: 'manifests' is not a list")
        return ImageIndex(media_type, tuple(_descriptor(e, f"index entry {i}") for i, e in enumerate(entries)))
    if media_type in media_types.MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise RegistryError("malformed image manifest: 'layers' is not a list")
        config = _descriptor(doc.get("config"), "manifest config")
        if config.media_type not in media_types.CONFIG_TYPES:
            raise UnsupportedMediaTypeError(
                f"config media type {config.media_type!r} is not a container image config (is this an artifact?)"
            )
        parsed = tuple(_descriptor(layer, f"layer {i}") for i, layer in enumerate(layers))
        for layer in parsed:
            if media_types.layer_compression(layer.media_type) is None:
                raise UnsupportedMediaTypeError(
                    f"layer {layer.digest} has unsupported media type {layer.media_type!r}; "
                    "supported: uncompressed tar, gzip and zstd"
                )
        return ImageManifest(media_type, config, parsed)
    raise UnsupportedMediaTypeError(f"manifest media type {media_type!r} is not supported")
