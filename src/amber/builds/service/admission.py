"""What one build may ask of this host, checked at accept: a request over a limit is refused (400 naming the
field and the limit) before anything is queued.

- ``build_config.vcpus`` ≤ ``Settings.resolved_max_build_vcpus`` (default: the host's cores);
- ``build_config.memory_mib`` ≤ ``resolved_max_build_memory_mib`` (default: the host's memory);
- ``build_config.disk_mb`` ≤ ``resolved_max_build_disk_mb`` (default: the data directory's free space now);
- ``git_clone`` of a local path or ``file://`` URL: an absolute path whose real path lies in
  ``AMBER_GIT_LOCAL_ROOTS`` (the URL's other rules are the request rules').

The guest disk cannot outgrow the size the build asked for (its virtual size), and running build VMs share the
host's memory up to ``memory_overcommit_ratio`` (the workers' claim, ``amber.builds.workers``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from amber.builds.pipeline.git_clone import GitCloneError, check_local_roots, filesystem_path
from amber.contract.errors import InvalidRequest
from amber.contract.request import CreateTemplateRequest
from amber.contract.steps import GitCloneStep
from amber.settings import Settings


def admission_problems(req: CreateTemplateRequest, settings: Settings) -> list[InvalidRequest]:
    """Every host limit ``req`` exceeds (empty: admitted)."""
    return list(_problems(req, settings))


def _problems(req: CreateTemplateRequest, settings: Settings) -> Iterator[InvalidRequest]:
    cfg = req.build_config
    if cfg is not None:
        limits = (("vcpus", cfg.vcpus, settings.resolved_max_build_vcpus, "vCPUs", "AMBER_MAX_BUILD_VCPUS"),
                  ("memory_mib", cfg.memory_mib, settings.resolved_max_build_memory_mib, "MiB",
                   "AMBER_MAX_BUILD_MEMORY_MIB"),
                  ("disk_mb", cfg.disk_mb, settings.resolved_max_build_disk_mb, "MB", "AMBER_MAX_BUILD_DISK_MB"))
        for name, asked, limit, unit, setting in limits:
            if asked is not None and asked > limit:
                yield InvalidRequest(f"build_config.{name}", f"{asked} is over this server's limit of {limit} {unit} "
                                                            f"per build ({setting})")
    for i, step in enumerate(req.steps or []):
        if isinstance(step, GitCloneStep) and filesystem_path(step.url) is not None:
            path = filesystem_path(step.url) or ""
            if not path.startswith("/"):
                yield InvalidRequest(f"steps[{i}].url", f"{step.url!r}: a local repository must be an absolute path")
                continue
            try:
                check_local_roots(step.url, settings.git_local_roots, cwd=Path("/"))
            except GitCloneError as exc:
                yield InvalidRequest(f"steps[{i}].url", exc.message)
