"""Runtime artifacts: a template's running state at a shape (vCPUs, memory) other than the one it was built at.

A restore needs the snapshot's exact machine, but callers ask for their own shape (the SDK always sends 2 vCPUs
and 512 MiB). The first create at a new shape boots the template's disk at that shape, runs its start command
and readiness probe again, and snapshots that; it and every later create at that shape restore from it.

Cache: ``<data_dir>/cache/runtime/<key>/`` with key = H(template artifact manifest, vcpus, memory). Entries
appear atomically (the snapshot renames its staging directory into place) and are immutable; one build per key
at a time (an asyncio lock in this process, ``flock`` across processes). Env values: the template's runtime env
reaches the start command as it did at build time; create-time envs never do.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import shutil
from pathlib import Path

from amber.builds.artifact_metadata import ARTIFACT_METADATA
from amber.builds.pipeline.guest_ops import agent_user
from amber.builds.pipeline.readiness import NotReady, probe_once, wait_until_ready
from amber.machines.errors import Unavailable
from amber.machines.templates import TemplateRuntime
from amber.vm import MicroVM, VMError, boot

log = logging.getLogger("amber.machines")


class RuntimeArtifacts:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.root = data_dir / "cache" / "runtime"
        self._locks: dict[str, asyncio.Lock] = {}

    def path_for(self, runtime: TemplateRuntime, vcpus: int, memory_mb: int) -> Path:
        manifest = runtime.artifact.manifest_sha256()
        key = hashlib.sha256(f"{manifest}:{vcpus}:{memory_mb}".encode()).hexdigest()[:40]
        return self.root / key

    async def get(self, runtime: TemplateRuntime, vcpus: int, memory_mb: int, *, internet: bool) -> Path:
        """The artifact of ``runtime``'s template at this shape, built now if it is not cached yet (its start
        command runs with ``internet`` as the machine asking for it has it; restores choose their own)."""
        path = await asyncio.to_thread(self.path_for, runtime, vcpus, memory_mb)
        if (path / "manifest.json").is_file():
            return path
        lock = self._locks.setdefault(path.name, asyncio.Lock())
        async with lock:
            if (path / "manifest.json").is_file():
                return path
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
            with open(self.root / f"{path.name}.lock", "w") as lock_file:
                await asyncio.to_thread(fcntl.flock, lock_file, fcntl.LOCK_EX)
                if not (path / "manifest.json").is_file():
                    await self._build(runtime, vcpus, memory_mb, path, internet)
        return path

    async def _build(self, runtime: TemplateRuntime, vcpus: int, memory_mb: int, path: Path, internet: bool) -> None:
        log.info("building the runtime artifact of %s at %d vCPU / %d MiB", runtime.artifact.directory.name, vcpus,
                 memory_mb)
        await asyncio.to_thread(shutil.rmtree, path, True)
        desc = runtime.artifact.description
        try:
            vm = await asyncio.to_thread(boot, runtime.artifact.chain, data_dir=self.data_dir, cpus=vcpus,
                                         memory_mib=memory_mb, internet=internet, nic=desc.network)
        except VMError as exc:
            raise Unavailable(f"the template could not be booted at {vcpus} vCPU / {memory_mb} MiB: "
                              f"{str(exc).splitlines()[0]}", code="no_eligible_runtime_host") from None
        try:
            await self._start(vm, runtime)
            await asyncio.to_thread(vm.snapshot, path)
            await asyncio.to_thread(shutil.copyfile, runtime.artifact.directory / ARTIFACT_METADATA,
                                    path / ARTIFACT_METADATA)
        except BaseException:
            await asyncio.to_thread(vm.close)
            await asyncio.to_thread(shutil.rmtree, path, True)
            raise

    @staticmethod
    async def _start(vm: MicroVM, runtime: TemplateRuntime) -> None:
        """Start the template's start command and wait for its readiness probe, as its build did."""
        user = agent_user(runtime.user or "root")
        cwd = runtime.workdir or "/"
        if runtime.runtime.start_cmd:
            vm.agent.start(shell=runtime.runtime.start_cmd, env=runtime.env, cwd=cwd, user=user)
        readiness = runtime.runtime.readiness
        if readiness is None:
            return

        async def probe(timeout: float) -> str | None:
            return await asyncio.to_thread(probe_once, vm.agent, readiness, env=runtime.env, cwd=cwd, user=user,
                                           timeout=timeout)

        try:
            await wait_until_ready(readiness, probe, asyncio.Event())
        except NotReady as exc:
            raise Unavailable(f"the template's service did not become ready at the requested shape: {exc}",
                              code="no_eligible_runtime_host") from None
