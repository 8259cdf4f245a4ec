"""The build pipeline behind ``BuildExecutor``: a stored ``BuildPlan`` becomes a snapshotted microVM template.

``create_executor(settings)`` is what the service's workers call. ``native`` runs the ``phases`` (``base``,
``steps``, ``start``, ``snapshot``, ``finalize``) over one ``attempt``, every cached result through the one
``runner``: OCI bases are imported natively (``amber.oci``/``amber.rootfs``), Dockerfile sources are built by
BuildKit (``amber.buildkit``), template bases reuse the parent's disk (``BuildJob.base_template_artifact``);
steps, start command, readiness and snapshot run in a build VM (an ``amber.vm.Machine`` from the executor's
``amber.vm.Driver``). ``store`` is the cache on disk, ``prune`` its eviction. See ``docs/pipeline.md``.
"""

from __future__ import annotations

from amber.builds.executor import BuildExecutor
from amber.builds.pipeline.native import NativeExecutor
from amber.settings import Settings
from amber.vm import QemuDriver


def create_executor(settings: Settings) -> BuildExecutor:
    """The executor for ``settings.data_dir`` (guest files, caches, artifacts and work files live there)."""
    data_dir = settings.data_dir.resolve()
    return NativeExecutor(data_dir=data_dir, vm=QemuDriver(data_dir, accel=settings.accel),
                          git_local_roots=settings.git_local_roots)  # fmt: skip


__all__ = ["NativeExecutor", "create_executor"]
