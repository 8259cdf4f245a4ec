"""What a machine needs of the template artifact it restores: the VM artifact itself (shape, disk size) and
the runtime defaults its commands run with (user, workdir, env values, start command, readiness), read from the
artifact's ``amber-artifact.json`` (``amber.builds.artifact_metadata``).

Artifacts are immutable once published, so loaded ones are cached by directory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from amber.builds.artifact_metadata import ArtifactMetadataError, read_artifact_metadata
from amber.builds.planning.runtime import RuntimeDefaults
from amber.vm import TemplateArtifact, virtual_size

MIB = 1 << 20


@dataclass(frozen=True)
class TemplateRuntime:
    """A template artifact as machines use it. ``runtime.env`` values stay in this process and the guest."""

    artifact: TemplateArtifact
    runtime: RuntimeDefaults

    @property
    def user(self) -> str | None:
        return self.runtime.user

    @property
    def workdir(self) -> str | None:
        return self.runtime.workdir

    @property
    def env(self) -> dict[str, str]:
        return self.runtime.env

    @property
    def vcpus(self) -> int:
        return self.artifact.description.cpus

    @property
    def memory_mb(self) -> int:
        return self.artifact.description.memory_mib

    @property
    def disk_mb(self) -> int:
        return virtual_size(self.artifact.chain.top) // MIB


_cache: dict[Path, TemplateRuntime] = {}
_lock = threading.Lock()


def load_template_runtime(directory: Path) -> TemplateRuntime:
    """The artifact at ``directory`` and its runtime defaults (blocking; cached). An artifact without metadata
    (a bare VM snapshot) runs as root in ``/`` with no env."""
    directory = directory.resolve()
    with _lock:
        hit = _cache.get(directory)
    if hit is not None:
        return hit
    artifact = TemplateArtifact.load(directory)
    try:
        runtime = read_artifact_metadata(directory).runtime
    except ArtifactMetadataError:
        runtime = RuntimeDefaults(user=None, workdir=None, env={}, start_cmd=None, readiness=None)
    loaded = TemplateRuntime(artifact=artifact, runtime=runtime)
    with _lock:
        if len(_cache) > 256:
            _cache.clear()
        _cache[directory] = loaded
    return loaded
