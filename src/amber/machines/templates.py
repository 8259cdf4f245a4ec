"""What a machine needs of the template artifact it restores: the VM artifact itself (shape, disk size) and
the runtime defaults its commands run with (user, workdir, env values, start command, readiness).

Artifacts are immutable once published, so loaded ones are cached by directory.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from amber.builds.pipeline.template_base import ARTIFACT_MANIFEST
from amber.builds.planning.runtime import ImageDefaults, inherited_defaults
from amber.vm import TemplateArtifact
from amber.vm.machine import virtual_size

MIB = 1 << 20


@dataclass(frozen=True)
class TemplateRuntime:
    """A template artifact as machines use it."""

    artifact: TemplateArtifact
    user: str | None
    workdir: str | None
    env: dict[str, str] = field(repr=False)  # values stay in this process and the guest
    start_cmd: str | None
    defaults: ImageDefaults = field(repr=False)

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
    """The artifact at ``directory`` and its ``amber-artifact.json`` (blocking; cached)."""
    directory = directory.resolve()
    with _lock:
        hit = _cache.get(directory)
    if hit is not None:
        return hit
    artifact = TemplateArtifact.load(directory)
    try:
        meta = json.loads((directory / ARTIFACT_MANIFEST).read_text())
    except FileNotFoundError:
        meta = {}
    defaults = inherited_defaults(meta.get("runtime_defaults"), meta.get("runtime_env"))
    runtime = TemplateRuntime(artifact=artifact, user=defaults.user, workdir=defaults.workdir,
                              env=dict(defaults.env), start_cmd=defaults.start_cmd, defaults=defaults)
    with _lock:
        if len(_cache) > 256:
            _cache.clear()
        _cache[directory] = runtime
    return runtime
