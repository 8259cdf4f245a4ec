"""The one settings object: every knob is an ``AMBER_*`` environment variable or a CLI flag."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration. ``data_dir`` holds everything Amber writes (database, blobs, artifacts, VMs)."""

    model_config = SettingsConfigDict(env_prefix="AMBER_", extra="ignore")

    data_dir: Path = Path(".amber")
    database_url: str | None = None  # default: SQLite under data_dir
    host: str = "127.0.0.1"
    port: int = 3000
    workers: int | None = None  # in-process build workers; default from cores and memory
    accel: str | None = None  # "kvm" or "tcg"; default: kvm only where vmx/svm exist
    build_timeout_secs: float = 3600.0  # one build attempt, all phases together
    phase_timeout_secs: float = 1200.0  # any single log phase (preparing, step, readiness, …)
    lease_secs: float = 30.0  # a worker renews its claim on a build this often x3; expired → interrupted
    claim_ttl_secs: int = 600  # lifetime of a name claim
    max_blob_bytes: int = 8 * 1024**3  # largest single build-context file accepted
    # JSON request bodies (every endpoint but raw uploads, see amber.api.body): larger → 413, deeper → 400.
    max_json_body_bytes: int = 8 * 1024**2  # the SDK's plan/validate send context files inline (base64, +33 %)
    max_json_depth: int = 64  # nested arrays/objects; the contract's requests need fewer than 10
    sse_heartbeat_secs: float = 10.0  # idle SSE streams get a comment line this often (SDK needs <= 15 s)
    log_poll_secs: float = 2.0  # followers re-check the database this often (entries written by other hosts)
    sweep_interval_secs: float = 60.0  # how often the server removes what dead Amber processes left (amber.sweep)
    cache_max_bytes: int | None = None  # all caches under data_dir/cache together; 0 = unbounded; default below
    cache_min_idle_secs: float = 300.0  # an entry used more recently than this is never evicted
    buildkit_cache_max_bytes: int = 10 * 1024**3  # BuildKit's own cache (Dockerfile builds), GC'd by dockerd; 0 = no GC
    debian_mirror: str | None = None  # builtin templates' debootstrap mirror; default: this host's apt sources
    rate_limit_per_sec: float = 100.0  # sustained requests per second per API key (0 = no limit); 429 beyond
    rate_limit_burst: int = 1000  # requests a key may make at once before the sustained rate applies
    # Directories whose repositories ``git_clone`` may read by local path or file:// URL (after realpath);
    # empty = none. Env: a JSON list or ``:``-separated paths.
    git_local_roots: Annotated[list[Path], NoDecode] = []
    # The group whose sockets the host's nftables table ``inet amber`` confines (guests with internet, host-side
    # fetches for users): no host address, no other guest, only the outside world. Give no other process it.
    isolation_gid: int = 64511
    # Addresses of the BuildKit bridges (one /24 per managed dockerd): Dockerfile RUN steps with internet sit
    # here, NATed to the outside, never reaching the host (see amber.isolation). Must not overlap a real network.
    build_network_pool: str = "10.213.0.0/16"
    # Admission (400 at accept naming the field and the limit): the most one build may ask for. None = what the
    # host can give: its cores, its memory, the free space of the data directory's file system.
    max_build_vcpus: int | None = None
    max_build_memory_mib: int | None = None
    max_build_disk_mb: int | None = None
    # Build VMs running in this process together get at most this many times the host's memory; a build that
    # would exceed it waits in the queue.
    memory_overcommit_ratio: float = 1.0
    # Builds of one namespace running at once, on every host together; None = one less than this host's
    # workers (at least 1), so one namespace never holds every worker; 0 = no limit. Waiting builds are taken
    # round robin by namespace either way.
    namespace_max_builds: int | None = None
    # Machines (sandboxes restored from templates).
    max_machines: int = 512  # machines running (or starting) on this host at once; beyond: 503 capacity_exceeded
    machine_memory_overcommit: float = 8.0  # guest memory of running machines ≤ host RAM times this (idle guests
    # touch a fraction of their memory: ~80 MB of a 512 MiB guest)
    machine_restore_slots: int | None = None  # restores at once (CPU-bound); default: one per core
    machine_queue_limit: int = 32  # creates waiting for a restore slot; beyond: 429 with Retry-After
    machine_stop_timeout_secs: float = 60.0  # graceful stop: hibernating running machines may take this long
    warm_pool_max_parked: int = 8  # parked (ready or warming) VMs of every warm pool together on this host
    warm_pool_tick_secs: float = 1.0  # the warm-pool controller reconciles every pool this often
    preview_connect_wait_secs: float = 5.0  # a preview request waits this long for its port to start listening
    preview_domain: str = "localhost"  # preview URLs are http://{port}-{machine}.{preview_domain}:{port}/
    preview_secret: str | None = Field(default=None, repr=False)  # signs preview and traffic tokens; default:
    # a random key kept in data_dir/preview.key (set it to the same value on every host of a cluster)

    @field_validator("git_local_roots", mode="before")
    @classmethod
    def _path_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part.strip()]
        return value

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def machines_dir(self) -> Path:
        return self.data_dir / "machines"

    @property
    def resolved_restore_slots(self) -> int:
        return max(1, self.machine_restore_slots or os.cpu_count() or 1)

    @property
    def resolved_workers(self) -> int:
        """Explicit ``workers`` (0 = accept builds but run none here), else one per 2 cores and per
        4 GiB of memory (at least 1, at most 8)."""
        if self.workers is not None:
            return max(0, self.workers)
        cores = os.cpu_count() or 1
        try:
            mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
        except (ValueError, OSError):
            mem_gib = 4.0
        return max(1, min(8, cores // 2, int(mem_gib // 4)))

    @property
    def resolved_max_build_vcpus(self) -> int:
        return self.max_build_vcpus if self.max_build_vcpus is not None else (os.cpu_count() or 1)

    @property
    def resolved_max_build_memory_mib(self) -> int:
        return self.max_build_memory_mib if self.max_build_memory_mib is not None else host_memory_mib()

    @property
    def resolved_max_build_disk_mb(self) -> int:
        """Explicit ``max_build_disk_mb``, else the data directory's free space now (MB = MiB here)."""
        if self.max_build_disk_mb is not None:
            return self.max_build_disk_mb
        return free_disk_bytes(self.data_dir) // (1024 * 1024)

    @property
    def resolved_namespace_max_builds(self) -> int | None:
        """The per-namespace limit of running builds (None = none)."""
        if self.namespace_max_builds is not None:
            return self.namespace_max_builds or None
        return max(1, self.resolved_workers - 1)

    @property
    def resolved_cache_max_bytes(self) -> int:
        """Explicit ``cache_max_bytes`` (0 = unbounded), else 20 GiB or a quarter of the data file system,
        whichever is smaller."""
        if self.cache_max_bytes is not None:
            return max(0, self.cache_max_bytes)
        return default_cache_max_bytes(self.data_dir)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'amber.db').resolve()}"


DEFAULT_CACHE_MAX_BYTES = 20 * 1024**3


def host_memory_mib() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return 4096


def _existing_parent(path: Path) -> Path:
    directory = path.resolve()
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def free_disk_bytes(data_dir: Path) -> int:
    """Free space (for root) of the file system that holds ``data_dir`` (or its nearest existing parent)."""
    try:
        info = os.statvfs(_existing_parent(data_dir))
    except OSError:
        return 0
    return info.f_bavail * info.f_frsize


def default_cache_max_bytes(data_dir: Path) -> int:
    """20 GiB, or a quarter of the file system holding ``data_dir`` when that is smaller."""
    try:
        info = os.statvfs(_existing_parent(data_dir))
    except OSError:
        return DEFAULT_CACHE_MAX_BYTES
    return min(DEFAULT_CACHE_MAX_BYTES, info.f_blocks * info.f_frsize // 4)


def prepare_data_dir(settings: Settings) -> Path:
    """Create the data directory private (0700: nothing under it is reachable by other users) and, for SQLite,
    the database file 0600 before SQLite creates it (its -wal and -shm files take its mode)."""
    path = settings.data_dir
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        database = Path(url.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(database, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for name in (database.name, f"{database.name}-wal", f"{database.name}-shm"):
            if (database.parent / name).exists():
                os.chmod(database.parent / name, 0o600)
    return path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
