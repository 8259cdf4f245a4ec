"""R30: a BuildKit request may name its Dockerfile only by ``dockerfile_path`` inside the uploaded context.

``with_context_dockerfile`` turns such a request (no ``dockerfile``, no ``base_image``, a ``dockerfile_path``
naming a file of ``build_context``) into the equivalent inline-Dockerfile request before the request rules run,
so validation, planning, the stored definition (and therefore retries) see the Dockerfile text. BuildKit puts
the inline text back at ``dockerfile_path``, so the build is the same. Anything else is returned unchanged.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from typing import Any

from amber.api.deps import AppState
from amber.contract.errors import InvalidRequest
from amber.store.blobs import resolve_for_build
from amber.store.keys import Caller

MAX_DOCKERFILE_BYTES = 1024 * 1024


def _same_path(a: str, b: str) -> bool:
    return posixpath.normpath(a) == posixpath.normpath(b)


def context_dockerfile_entry(data: Any) -> dict[str, Any] | None:
    """The build-context entry the request's ``dockerfile_path`` names, when that path is its only source."""
    if not isinstance(data, dict) or data.get("dockerfile") is not None or data.get("base_image") is not None:
        return None
    path = data.get("dockerfile_path")
    context = data.get("build_context")
    if not isinstance(path, str) or not path or not isinstance(context, dict):
        return None
    files = context.get("files")
    if not isinstance(files, list):
        return None
    for entry in files:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and _same_path(entry["path"], path):
            return entry
    return None


def _text(raw: bytes, path: str) -> str:
    if len(raw) > MAX_DOCKERFILE_BYTES:
        raise InvalidRequest("dockerfile_path", f"{path!r} is larger than {MAX_DOCKERFILE_BYTES} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidRequest("dockerfile_path", f"{path!r} is not UTF-8 text") from None


async def with_context_dockerfile(data: Any, state: AppState, caller: Caller) -> Any:
    """``data`` with ``dockerfile`` read from the context file at ``dockerfile_path`` (see the module doc).
    Raises ``InvalidRequest`` naming ``dockerfile_path`` (or ``BlobProblem`` for a blob never uploaded)."""
    if not isinstance(data, dict) or data.get("dockerfile") is not None or data.get("base_image") is not None:
        return data
    path = data.get("dockerfile_path")
    if not isinstance(path, str) or not path or data.get("build_context") is None:
        return data
    entry = context_dockerfile_entry(data)
    if entry is None or entry.get("entry_type") != "file":
        raise InvalidRequest("dockerfile_path", f"{path!r} is not a file in build_context")
    content, blob_id = entry.get("content_base64"), entry.get("blob_id")
    if isinstance(content, str) and blob_id is None:
        try:
            raw = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            return data  # the request rules report the bad base64 on the entry itself
        return {**data, "dockerfile": _text(raw, path)}
    if isinstance(blob_id, str) and content is None:
        paths = await state.db.read(
            lambda s: resolve_for_build(s, state.blobs, caller.namespace_id, [(entry["path"], blob_id)]))
        with open(paths[blob_id], "rb") as handle:
            raw = handle.read(MAX_DOCKERFILE_BYTES + 1)
        return {**data, "dockerfile": _text(raw, path)}
    return data  # neither or both: the request rules report the entry
