"""The build pipeline behind ``BuildExecutor``: native builds (base image + declarative steps in a microVM).

``create_executor(settings)`` is what the service's workers call. Dockerfile sources fail with a clear
``BuildFailed`` until the BuildKit path is wired in (``amber.buildkit``).
"""

from __future__ import annotations

from amber.builds.executor import BuildExecutor
from amber.builds.pipeline.machine import MicroVmBackend
from amber.builds.pipeline.native import NativeExecutor
from amber.settings import Settings


def create_executor(settings: Settings) -> BuildExecutor:
    """The executor for ``settings.data_dir`` (guest files, caches, artifacts and work files live there)."""
    data_dir = settings.data_dir.resolve()
    return NativeExecutor(data_dir=data_dir, vm=MicroVmBackend(data_dir, accel=settings.accel))


__all__ = ["NativeExecutor", "create_executor"]
