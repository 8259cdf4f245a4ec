"""A ``BuildJob`` for a request, as the service makes one: validated, planned with the blob digests the store would
record, its memory-only inputs taken from the request (for pipeline tests and benchmarks)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amber.builds.executor import BuildInputs, BuildJob
from amber.builds.planning import BaseTemplate, make_plan
from amber.contract.validation import validate_create_request


def job_for(
    request: Mapping[str, Any],
    build_id: str,
    data_dir: Path,
    *,
    blob_paths: Mapping[str, Path] | None = None,
    base_template_artifact: Path | None = None,
    base_runtime: Mapping[str, Any] | None = None,
) -> BuildJob:
    """``blob_paths``: blob id → file (its digest is hashed from the file, as the blob store verified it);
    ``base_template_artifact``: the artifact a template ``base_image`` resolved to (``base_runtime`` its runtime
    defaults JSON, for the plan)."""
    req = validate_create_request(dict(request))
    paths = dict(blob_paths or {})
    digests = {blob_id: "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() for blob_id, path in paths.items()}
    base = None
    if base_template_artifact is not None:
        base = BaseTemplate(req.base_image or "", base_template_artifact.name, base_runtime)
    return BuildJob(build_id=build_id, template_id="tmpl_" + build_id, plan=make_plan(req, base, digests),
                    data_dir=data_dir, inputs=BuildInputs.of(req), blob_paths=paths,
                    base_template_artifact=base_template_artifact)  # fmt: skip
