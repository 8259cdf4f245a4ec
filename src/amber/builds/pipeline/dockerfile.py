"""The root disk of a ``dockerfile`` source: BuildKit (``amber.buildkit``) builds the tree, ``amber.rootfs``
turns it into an ext4 disk. The rest of the build (VM, start command, readiness, snapshot) is the native one.

BuildKit keeps its own layer cache (and bypasses it for secrets and ``skip_cache``); the template-level caches
here (step layers, final artifact) are not used for Dockerfile sources, because equal inputs do not guarantee
an equal tree (``RUN date``) and hashing the tree would cost more than BuildKit's cached rebuild.
Secrets and registry credentials go to ``amber.buildkit`` in memory only.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from amber.api.schemas.requests import CreateTemplateRequest
from amber.buildkit.build import DockerfileBuildRequest, build_dockerfile_rootfs
from amber.buildkit.daemon import managed_dockerd
from amber.buildkit.imageconfig import BuiltImageConfig
from amber.builds.executor import BuildFailed, Emit, FailurePhase, LogPhase
from amber.builds.pipeline.credentials import to_registry_credentials
from amber.builds.pipeline.events import BuildLog
from amber.builds.planning.runtime import ImageDefaults
from amber.oci.credentials import BasicCredentials, exchange_credentials
from amber.oci.errors import ImageImportError
from amber.rootfs.ext4 import DEFAULT_MIN_SIZE_MIB, make_ext4


def _basic(value: Any) -> BasicCredentials | None:
    credentials = to_registry_credentials(value)
    return exchange_credentials(credentials) if credentials is not None else None


def built_image_defaults(config: BuiltImageConfig) -> ImageDefaults:
    hc = config.healthcheck
    healthcheck = None
    if hc is not None:
        healthcheck = {"Test": list(hc.test), "Interval": hc.interval_ns, "Timeout": hc.timeout_ns,
                       "StartPeriod": hc.start_period_ns, "Retries": hc.retries}  # fmt: skip
    return ImageDefaults(
        user=config.user or None,
        env=tuple(config.env_map.items()),
        workdir=config.working_dir or None,
        healthcheck=healthcheck,
    )


async def build_dockerfile_disk(
    req: CreateTemplateRequest,
    *,
    data_dir: Path,
    work_dir: Path,
    blob_paths: Mapping[str, Path],
    secrets: Mapping[str, str],
    registry_credentials: Mapping[str, Any],
    base_image_credentials: Any,
    emit: Emit,
    log: BuildLog,
    cancel: asyncio.Event,
) -> tuple[Path, BuiltImageConfig]:
    """(ext4 disk, image config of the built stage). Raises ``BuildFailed``."""
    cfg = req.build_config
    request = DockerfileBuildRequest(
        dockerfile=req.dockerfile,
        dockerfile_path=req.dockerfile_path,
        context_files=list(req.build_context.files) if req.build_context else [],
        blob_paths=blob_paths,
        build_args=dict(req.build_args or {}),
        build_target=req.build_target,
        internet_access=not (cfg is not None and cfg.internet_access is False),
        skip_cache=bool(req.skip_cache),
        build_envs=dict(req.build_envs or {}),  # engineer D: build_envs reach the Dockerfile's RUN steps (R56)
    )
    try:
        credentials = {host: c for host, v in registry_credentials.items() if (c := _basic(v)) is not None}
        base_credential = _basic(base_image_credentials if base_image_credentials is not None else req.base_image_auth)
    except (ImageImportError, ValueError) as exc:
        raise BuildFailed(f"registry credentials: {exc}", phase=FailurePhase.AUTH) from None
    tree, staging = work_dir / "tree", work_dir / "buildkit"
    await log.info(LogPhase.PREPARING, "building the Dockerfile with BuildKit")
    try:
        result = await build_dockerfile_rootfs(
            request,
            dockerd=managed_dockerd(data_dir),
            target_dir=tree,
            staging_dir=staging,
            emit=emit,
            cancel=cancel,
            secrets=secrets,
            registry_credentials=credentials,
            base_image_credential=base_credential,
        )
        disk = work_dir / "base.raw"
        await log.info(LogPhase.PREPARING, "writing the root disk")
        min_size = max(cfg.disk_mb if cfg and cfg.disk_mb else 0, DEFAULT_MIN_SIZE_MIB)
        try:
            await asyncio.to_thread(make_ext4, result.tree, disk, min_size)
        except ImageImportError as exc:
            raise BuildFailed(f"writing the root disk failed: {exc}", phase=FailurePhase.PREPARE) from None
    finally:
        await asyncio.to_thread(shutil.rmtree, tree, True)
        await asyncio.to_thread(shutil.rmtree, staging, True)
    return disk, result.image_config
