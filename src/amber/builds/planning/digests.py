"""Content digests of requests: canonical JSON hashing, source/Dockerfile/context digests. Pure.

Every digest is ``sha256:<64 hex>`` over canonical JSON (sorted keys, no spaces, UTF-8), so equal inputs give
equal digests on every host. Credentials and secret values are never inputs.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from amber.contract.request import CreateTemplateRequest
from amber.contract.sources import BuildContextFile


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_bytes(data: bytes) -> str:
    return "sha256:" + sha256_hex(data)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_json(value: Any) -> str:
    return digest_bytes(canonical_json(value))


def dockerfile_digest(text: str) -> str:
    return digest_bytes(text.encode())


ContentDigest = Callable[[BuildContextFile], str]


def content_digest(entry: BuildContextFile, blob_digests: Mapping[str, str] | None = None) -> str:
    """Content identity of a context file: inline bytes are hashed; an uploaded blob has the digest the store
    recorded for it (``blob_digests``, blob id → ``sha256:…``; blobs are stored content-addressed); a blob the
    store does not know yet (a plan before the upload) is named by its id. Directories have none ("")."""
    if entry.entry_type == "dir":
        return ""
    if entry.content_base64 is not None:
        return digest_bytes(base64.b64decode(entry.content_base64))
    return (blob_digests or {}).get(entry.blob_id or "", f"blob:{entry.blob_id}")


def context_manifest_id(context_digest: str) -> str:
    return "ctx_" + context_digest.removeprefix("sha256:")[:24]


@dataclass(frozen=True)
class ContextManifest:
    entries: tuple[tuple[str, str, str, str], ...]  # (path, entry_type, mode, content digest or "")
    digest: str

    @property
    def file_count(self) -> int:
        return sum(1 for e in self.entries if e[1] == "file")

    @property
    def manifest_id(self) -> str:
        return context_manifest_id(self.digest)


def context_entry(entry: BuildContextFile, content_digest: ContentDigest) -> tuple[str, str, str, str]:
    return (
        entry.path.rstrip("/"),
        entry.entry_type,
        entry.mode or "",
        content_digest(entry) if entry.entry_type == "file" else "",
    )


def context_manifest(files: Iterable[BuildContextFile], content_digest: ContentDigest) -> ContextManifest:
    """Order-independent manifest of a build context (entries sorted by path)."""
    entries = tuple(sorted(context_entry(f, content_digest) for f in files))
    return ContextManifest(entries, digest_json([list(e) for e in entries]))


def source_definition(req: CreateTemplateRequest, context_digest: str | None) -> dict[str, Any]:
    """What the build is made of: source, steps, envs, start command and runtime config, context digest.
    Excludes identity (name, tags, claim), resources, credentials, secrets and cache switches."""
    data = req.model_dump(
        mode="json",
        exclude_none=True,
        include={
            "dockerfile",
            "base_image",
            "steps",
            "build_envs",
            "start_cmd",
            "dockerfile_path",
            "build_args",
            "build_target",
            "runtime_config",
        },
    )
    data["build_backend"] = req.effective_backend
    if context_digest is not None:
        data["context_digest"] = context_digest
    return data


def source_digest(req: CreateTemplateRequest, context_digest: str | None) -> str:
    return digest_json(source_definition(req, context_digest))
