"""A template artifact's own metadata, ``amber-artifact.json``: the one reader and the one writer.

A template artifact directory holds the VM snapshot (``manifest.json`` and its files, ``amber.vm``'s format) and
this file, written by the build's ``finalize`` phase next to it. It carries what restoring the template needs
beyond the VM: the runtime defaults, *with the env values* (the API and the database keep env keys only, R55;
the values live here, server-side), the OCI metadata and the build's digests.

``read_artifact_metadata(artifact_dir)`` is how anything reads it (a child build on a template base; machines
started from the template); ``write_artifact_metadata`` is how the pipeline writes it (atomically: a reader sees
the old file or the new one). The format is JSON::

    {"runtime_defaults": TemplateRuntimeDefaults (+ "readiness_from_healthcheck"), "runtime_env": {KEY: value},
     "oci_metadata": TemplateOciImageMetadata | null,
     "source_digest": str | null, "dockerfile_digest": str | null, "context_digest": str | null}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amber.builds.planning.runtime import RuntimeDefaults, runtime_from_json

ARTIFACT_METADATA = "amber-artifact.json"


class ArtifactMetadataError(ValueError):
    """The file is missing or does not read as artifact metadata; the message names the directory."""


@dataclass(frozen=True)
class ArtifactMetadata:
    runtime: RuntimeDefaults  # default user, workdir, env (values), start command and readiness of the template
    oci_metadata: dict[str, Any] | None = None  # TemplateOciImageMetadata of the base image, if any
    source_digest: str | None = None
    dockerfile_digest: str | None = None
    context_digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        runtime = self.runtime.to_json()
        if self.runtime.readiness_from_healthcheck:
            runtime["readiness_from_healthcheck"] = True
        return {
            "runtime_defaults": runtime,
            "runtime_env": dict(self.runtime.env),
            "oci_metadata": self.oci_metadata,
            "source_digest": self.source_digest,
            "dockerfile_digest": self.dockerfile_digest,
            "context_digest": self.context_digest,
        }


def read_artifact_metadata(artifact_dir: Path) -> ArtifactMetadata:
    """The metadata of the template artifact in ``artifact_dir``. Raises ``ArtifactMetadataError``."""
    path = artifact_dir / ARTIFACT_METADATA
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactMetadataError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runtime_defaults"), dict):
        raise ArtifactMetadataError(f"{path}: not template artifact metadata")
    env = data.get("runtime_env")
    oci = data.get("oci_metadata")
    return ArtifactMetadata(
        runtime=runtime_from_json(data["runtime_defaults"], env if isinstance(env, dict) else None),
        oci_metadata=oci if isinstance(oci, dict) else None,
        source_digest=data.get("source_digest"),
        dockerfile_digest=data.get("dockerfile_digest"),
        context_digest=data.get("context_digest"),
    )


def write_artifact_metadata(artifact_dir: Path, metadata: ArtifactMetadata) -> None:
    """Write (or replace) the metadata of the artifact in ``artifact_dir``."""
    path = artifact_dir / ARTIFACT_METADATA
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metadata.to_json(), indent=2, sort_keys=True))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
