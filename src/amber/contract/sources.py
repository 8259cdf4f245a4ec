"""Where a build's files come from (templates-models.md § 3.4): the build context, and the source and backend
kinds a request resolves to (R29, R32). Pure."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from amber.contract._models import OpenModel

SourceType = Literal["declarative", "dockerfile", "oci_import", "template_base"]
Backend = Literal["buildkit", "native"]


class BuildContextFile(OpenModel):
    path: str
    entry_type: Literal["dir", "file"]
    content_base64: str | None = Field(default=None, repr=False)
    blob_id: str | None = None
    mode: str | None = None


class BuildContext(OpenModel):
    files: list[BuildContextFile]


def context_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a build-context entry, or None. The one rule for the build context, the blob
    preflight and ``dockerfile_path``: relative, ``/``-separated, no ``.``, ``..`` or empty segment (``a//b``),
    no backslash or NUL; one trailing ``/`` (a directory) is allowed."""
    if not path or path.startswith("/"):
        return f"{path!r} must be a relative build-context path (no leading '/')"
    if "\\" in path or "\x00" in path:
        return f"{path!r} must use forward slashes and no NUL bytes"
    trimmed = path[:-1] if path.endswith("/") else path
    if any(part in ("", ".", "..") for part in trimmed.split("/")):
        return f"{path!r} must not contain '.', '..' or empty segments"
    return None


def dockerfile_from_images(dockerfile: str) -> list[str]:
    """Image references named by ``FROM`` lines (stage names and ``$ARG`` forms are skipped)."""
    images: list[str] = []
    stages: set[str] = set()
    for raw in dockerfile.splitlines():
        words = raw.strip().split()
        if len(words) < 2 or words[0].upper() != "FROM":
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if not args:
            continue
        image = args[0]
        if len(args) >= 3 and args[1].upper() == "AS":
            stages.add(args[2].lower())
        if "$" in image or image.lower() in stages or image == "scratch":
            continue
        images.append(image)
    return images


