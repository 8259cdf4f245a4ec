"""The native pipeline end to end: a real loopback registry, the busybox image, real QEMU (TCG here).

One module-scoped executor and data directory: the first build is cold, the second identical one must be served
from cache, a ``skip_cache`` step rebuilds from its position, a failing ``run`` step reports its index and
output. In-guest work is kept tiny (TCG runs the guest ~18x slower than the host).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amber.buildkit.daemon import managed_dockerd
from amber.builds.executor import BuildArtifact
from amber.builds.pipeline import NativeExecutor
from amber.builds.planning import BuildPlan, render_plan
from amber.contract.failures import BuildFailed, FailurePhase
from amber.contract.logs import CacheKind, CacheReason, CacheStatus, LogEvent, LogKind, LogPhase
from amber.guest.install import ensure_guest
from amber.settings import get_settings
from amber.vm import QemuDriver, restore, sweep_stale
from tests.support.images import push_busybox_image
from tests.support.jobs import job_for
from tests.support.registry import Registry, running_registry

pytestmark = pytest.mark.vm

APP_TEXT = b"hello from a blob\n"
APP_BLOB = "sha256:" + hashlib.sha256(APP_TEXT).hexdigest()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private data dir whose guest/ is the repository's built guest (`amber setup-guest`)."""
    guest_root = get_settings().data_dir.resolve()
    ensure_guest(guest_root)
    d = tmp_path_factory.mktemp("amber-builds")
    (d / "guest").symlink_to(guest_root / "guest")
    yield d
    asyncio.run(managed_dockerd(d).stop())  # started on demand by Dockerfile builds
    sweep_stale(d)
    leftovers = list((d / "run").glob("vm-*")) if (d / "run").exists() else []
    assert not leftovers, f"VM run directories left behind: {leftovers}"


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with running_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def base_ref(registry: Registry) -> str:
    return push_busybox_image(registry)


@pytest.fixture(scope="module")
def executor(data_dir: Path) -> NativeExecutor:
    return NativeExecutor(data_dir=data_dir, vm=QemuDriver(data_dir))


@pytest.fixture(scope="module")
def blob(data_dir: Path) -> Path:
    path = data_dir / "blob-app.txt"
    path.write_bytes(APP_TEXT)
    return path


class Build:
    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self.plan: BuildPlan | None = None

    async def emit(self, event: LogEvent) -> None:
        self.events.append(event)

    def cache(self, kind: CacheKind) -> list[tuple[int | None, CacheStatus, CacheReason | None]]:
        return [
            (e.step_index, e.cache_status, e.cache_reason)
            for e in self.events
            if e.kind == LogKind.CACHE and e.cache_kind == kind and e.cache_status is not None
        ]

    def phases(self) -> list[LogPhase]:
        seen: list[LogPhase] = []
        for e in self.events:
            if e.phase is not None and (not seen or seen[-1] != e.phase):
                seen.append(e.phase)
        return seen


def run_build(
    executor: NativeExecutor,
    data_dir: Path,
    request: dict[str, Any],
    build_id: str,
    blob: Path,
    base_template_artifact: Path | None = None,
) -> tuple[Build, BuildArtifact | BuildFailed]:
    build = Build()
    job = job_for(request, build_id, data_dir, blob_paths={APP_BLOB: blob},
                  base_template_artifact=base_template_artifact)  # fmt: skip
    build.plan = job.plan

    async def go() -> BuildArtifact | BuildFailed:
        try:
            return await executor.run(job, build.emit, asyncio.Event())
        except BuildFailed as failed:
            return failed

    return build, asyncio.run(go())


def request_for(base_ref: str, *, extra_steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": "pipeline-test",
        "base_image": base_ref,
        "build_config": {"vcpus": 1, "memory_mib": 256},
        "build_envs": {"BUILD_ONLY": "visible-to-steps"},
        "steps": [
            {"action": "run", "command": 'echo "$BUILD_ONLY" > /build-env'},
            {"action": "copy", "sources": ["builder-context/step-1/src-0/app.txt"], "dst": "/srv/app.txt",
             "mode": "0640"},
            {"action": "workdir", "path": "/srv"},
            *(extra_steps or []),
            {"action": "run", "command": "echo made-in-$(pwd) > /home/app/made.txt", "user": "app"},
        ],
        "build_context": {"files": [
            {"path": "builder-context/step-1/src-0/app.txt", "entry_type": "file", "blob_id": APP_BLOB,
             "mode": "0644"},
        ]},
        "start_cmd": "env > /tmp/start-env; echo started > /dev/shm/state; exec httpd -f -p 8080 -h /srv",
        "runtime_config": {"readiness": {"kind": "tcp", "port": 8080, "timeout_secs": 60, "interval_ms": 100,
                                         "startup_grace_secs": 0},
                           "default_envs": {"RUNTIME_ENV": "yes"}},
    }  # fmt: skip


@pytest.fixture(scope="module")
def cold(
    executor: NativeExecutor, data_dir: Path, base_ref: str, blob: Path
) -> tuple[Build, BuildArtifact | BuildFailed]:
    return run_build(executor, data_dir, request_for(base_ref), "tb_cold", blob)


def test_cold_build_runs_every_phase_and_restores(
    cold: tuple[Build, BuildArtifact | BuildFailed], data_dir: Path
) -> None:
    build, result = cold
    assert isinstance(result, BuildArtifact), result
    assert build.cache(CacheKind.LAYER)[0][1] in (CacheStatus.MISS, CacheStatus.HIT)  # base disk
    step_cache = [c for c in build.cache(CacheKind.LAYER) if c[0] is not None]
    assert [c[1] for c in step_cache if c[1] != CacheStatus.STORED] == [CacheStatus.MISS] * 4
    assert [c[0] for c in step_cache if c[1] == CacheStatus.STORED] == [1, 2, 3, 4]
    phases = build.phases()
    for phase in (LogPhase.PREPARING, LogPhase.VM_CREATE, LogPhase.STEP, LogPhase.SYNC, LogPhase.STARTUP,
                  LogPhase.READINESS, LogPhase.SNAPSHOT, LogPhase.FINALIZE, LogPhase.CLEANUP):  # fmt: skip
        assert phase in phases, (phase, phases)
    assert all(e.total_steps == 4 for e in build.events if e.step_index is not None)
    defaults = result.runtime_defaults
    assert defaults["default_workdir"] == "/srv" and defaults["start_cmd"].startswith("env > /tmp/start-env")
    assert "RUNTIME_ENV" in defaults["default_env_keys"] and "yes" not in str(defaults)
    assert result.cache_summary["layer_stores"] >= 4 and result.cache_summary["final_artifact_stores"] == 1
    assert result.source_digest and result.dockerfile_digest and result.context_digest
    # What /plan shows for this request is what the build did; the user is the image's, unknown to the plan.
    assert build.plan is not None
    shown = render_plan(build.plan)
    assert (shown.source_digest, shown.dockerfile_digest) == (result.source_digest, result.dockerfile_digest)
    assert shown.context_manifest is not None and shown.context_manifest.context_digest == result.context_digest
    assert shown.build_plan.default_workdir == defaults["default_workdir"] == "/srv"
    assert shown.build_plan.readiness == defaults["readiness"] and shown.build_plan.start_cmd == defaults["start_cmd"]
    assert shown.build_plan.default_user is None and defaults["default_user"] == "root"

    with restore(result.artifact_dir, data_dir=data_dir) as vm:
        vm.agent.tcp_probe(8080)  # the started service is still listening
        assert vm.exec(["cat", "/srv/app.txt"]).stdout == APP_TEXT
        assert vm.exec(["stat", "-c", "%a", "/srv/app.txt"]).stdout.strip() == b"640"
        assert vm.exec(["cat", "/build-env"]).stdout == b"visible-to-steps\n"
        assert vm.exec(["cat", "/home/app/made.txt"]).stdout == b"made-in-/srv\n"
        assert vm.exec(["stat", "-c", "%U", "/home/app/made.txt"]).stdout.strip() == b"app"
        start_env = vm.exec(["cat", "/tmp/start-env"]).stdout.decode()
        assert "RUNTIME_ENV=yes" in start_env
        assert "BUILD_ONLY" not in start_env  # build envs never reach the start command
        assert vm.exec(["cat", "/dev/shm/state"]).stdout == b"started\n"  # memory state from before the snapshot


def test_identical_rebuild_is_served_from_cache(
    cold: tuple[Build, BuildArtifact | BuildFailed], executor: NativeExecutor, data_dir: Path, base_ref: str,
    blob: Path,
) -> None:  # fmt: skip
    assert isinstance(cold[1], BuildArtifact)
    build, result = run_build(executor, data_dir, request_for(base_ref), "tb_warm", blob)
    assert isinstance(result, BuildArtifact), result
    layer = build.cache(CacheKind.LAYER)
    assert layer[0] == (None, CacheStatus.HIT, None)  # the base disk
    assert layer[1:] == [(i, CacheStatus.HIT, None) for i in (1, 2, 3, 4)]  # every step a cache hit
    assert build.cache(CacheKind.FINAL_ARTIFACT) == [(None, CacheStatus.HIT, None)]
    assert LogPhase.VM_CREATE not in build.phases()  # nothing booted
    assert result.runtime_defaults == cold[1].runtime_defaults
    assert result.artifact_dir != cold[1].artifact_dir
    with restore(result.artifact_dir, data_dir=data_dir) as vm:  # the linked copy restores on its own
        vm.agent.tcp_probe(8080)
        assert vm.exec(["cat", "/srv/app.txt"]).stdout == APP_TEXT


def test_skip_cache_step_rebuilds_itself_and_everything_after(
    cold: tuple[Build, BuildArtifact | BuildFailed], executor: NativeExecutor, data_dir: Path, base_ref: str,
    blob: Path,
) -> None:  # fmt: skip
    assert isinstance(cold[1], BuildArtifact)
    request = request_for(base_ref, extra_steps=[{"action": "skip_cache"}])
    build, result = run_build(executor, data_dir, request, "tb_skip", blob)
    assert isinstance(result, BuildArtifact), result
    steps = [c for c in build.cache(CacheKind.LAYER) if c[0] is not None]
    assert steps == [
        (1, CacheStatus.HIT, None),
        (2, CacheStatus.HIT, None),
        (3, CacheStatus.HIT, None),
        (4, CacheStatus.BYPASS, CacheReason.BUILDER_CACHE_BOUNDARY),
        (5, CacheStatus.BYPASS, CacheReason.BUILDER_CACHE_BOUNDARY),
    ]
    assert build.cache(CacheKind.FINAL_ARTIFACT) == [(None, CacheStatus.BYPASS, CacheReason.BUILDER_CACHE_BOUNDARY)]
    with restore(result.artifact_dir, data_dir=data_dir) as vm:
        assert vm.exec(["cat", "/home/app/made.txt"]).stdout == b"made-in-/srv\n"


def test_failing_run_step_reports_index_and_output(
    executor: NativeExecutor, data_dir: Path, base_ref: str, blob: Path
) -> None:
    request = {
        "base_image": base_ref,
        "build_config": {"vcpus": 1, "memory_mib": 256},
        "steps": [
            {"action": "run", "command": "true"},
            {"action": "run", "command": "echo first line; echo the-reason >&2; exit 3"},
            {"action": "run", "command": "echo never"},
        ],
    }
    build, result = run_build(executor, data_dir, request, "tb_fail", blob)
    assert isinstance(result, BuildFailed)
    assert result.phase == FailurePhase.BUILD_STEP and result.step_index == 2 and result.code == "build_error"
    assert "step 2" in result.message and "exited with code 3" in result.message
    assert "the-reason" in result.message and "first line" in result.message
    assert not (data_dir / "artifacts" / "tb_fail").exists()
    assert not (data_dir / "builds" / "tb_fail").exists()
    assert any(e.step_index == 2 and "the-reason" in e.message for e in build.events)


def qemu_processes_for(data_dir: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = str((proc / "cwd").resolve()) if "qemu-system" in cmd else ""
        except OSError:
            continue
        if "qemu-system" in cmd and (str(data_dir) in cmd or cwd.startswith(str(data_dir))):
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("when", ["step", "boot", "snapshot"])
def test_cancel_stops_the_vm_and_leaves_nothing_behind(
    executor: NativeExecutor, data_dir: Path, base_ref: str, blob: Path, when: str
) -> None:
    last = "sleep 3600" if when != "snapshot" else "true"
    request = {
        "base_image": base_ref,
        "build_config": {"vcpus": 1, "memory_mib": 256},
        "steps": [{"action": "run", "command": f"echo cancel-{when} > /x"}, {"action": "run", "command": last}],
    }
    build = Build()
    cancel = asyncio.Event()

    async def emit(event: LogEvent) -> None:
        build.events.append(event)
        if when == "step" and event.phase == LogPhase.STEP and event.step_index == 2:
            cancel.set()
        if when == "boot" and event.phase == LogPhase.VM_CREATE:
            cancel.set()  # the first vm_create entry comes right before the boot starts
        if when == "snapshot" and event.phase == LogPhase.SNAPSHOT:
            cancel.set()  # right before the snapshot starts: it is cancelled (or a timeout fires) mid-way

    job = job_for(request, f"tb_cancel_{when}", data_dir)

    async def go() -> None:
        # The guard only keeps a broken cancel from hanging the suite; the sleep would take an hour.
        await asyncio.wait_for(executor.run(job, emit, cancel), timeout=300)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(go())
    assert cancel.is_set()
    assert qemu_processes_for(data_dir) == []
    assert not (data_dir / "builds" / f"tb_cancel_{when}").exists()
    assert not (data_dir / "artifacts" / f"tb_cancel_{when}").exists()
    assert not list((data_dir / "artifacts").glob(f".tb_cancel_{when}.tmp-*")), "snapshot staging left behind"
    layers = data_dir / "cache" / "build" / "layers"
    unpublished = [p for p in layers.glob("*.qcow2") if not Path(f"{p}.ok").exists()]
    assert unpublished == []
    assert any(e.phase == LogPhase.CLEANUP for e in build.events)


def test_dockerfile_source_is_built_by_buildkit_then_started_and_snapshotted(
    executor: NativeExecutor, data_dir: Path, base_ref: str, blob: Path
) -> None:
    request: dict[str, Any] = {
        "dockerfile": (
            f"FROM {base_ref}\nRUN echo from-buildkit > /bk.txt && mkdir -p /srv && echo ok > /srv/index.html\n"
            "ENV FROM_DOCKERFILE=yes\nWORKDIR /srv\n"
            "HEALTHCHECK --interval=1s CMD wget -q -O /dev/null http://127.0.0.1:8080/\n"
        ),
        "build_config": {"vcpus": 1, "memory_mib": 256},
        "start_cmd": "env > /tmp/start-env; exec httpd -f -p 8080 -h /srv",
    }
    build, result = run_build(executor, data_dir, request, "tb_dockerfile", blob)
    assert isinstance(result, BuildArtifact), result
    assert result.runtime_defaults["default_workdir"] == "/srv"
    assert "FROM_DOCKERFILE" in result.runtime_defaults["default_env_keys"]
    assert result.dockerfile_digest == "sha256:" + hashlib.sha256(request["dockerfile"].encode()).hexdigest()
    assert LogPhase.PREPARING in build.phases() and LogPhase.SNAPSHOT in build.phases()
    # No readiness was given: the image HEALTHCHECK became a command probe, and the metadata says so.
    readiness = result.runtime_defaults["readiness"]
    assert readiness["kind"] == "command" and "wget" in readiness["command"] and readiness["interval_ms"] == 1000
    assert result.oci_metadata is not None
    assert result.oci_metadata["healthcheck"]["mapped_readiness"] == readiness
    # /plan reads the HEALTHCHECK and the WORKDIR from the Dockerfile: it shows what the build did.
    assert build.plan is not None
    shown = render_plan(build.plan).build_plan
    assert shown.readiness == readiness and shown.default_workdir == "/srv" and shown.default_user is None
    with restore(result.artifact_dir, data_dir=data_dir) as vm:
        assert vm.exec(["cat", "/bk.txt"]).stdout == b"from-buildkit\n"
        assert "FROM_DOCKERFILE=yes" in vm.exec(["cat", "/tmp/start-env"]).stdout.decode()
        vm.agent.tcp_probe(8080)


def test_build_on_a_template_base_inherits_its_disk_and_defaults(
    cold: tuple[Build, BuildArtifact | BuildFailed], executor: NativeExecutor, data_dir: Path, blob: Path
) -> None:
    parent = cold[1]
    assert isinstance(parent, BuildArtifact)
    request = {
        "base_image": "tmpl_cold",
        "build_config": {"vcpus": 1, "memory_mib": 256},
        "steps": [{"action": "run", "command": 'cat app.txt > /child.txt && echo "$RUNTIME_ENV" >> /child.txt'}],
        "start_cmd": "exec httpd -f -p 8081 -h /srv",
        "runtime_config": {
            "readiness": {"kind": "http", "port": 8081, "path": "/app.txt", "interval_ms": 100, "startup_grace_secs": 0}
        },
    }
    build, result = run_build(executor, data_dir, request, "tb_child", blob, base_template_artifact=parent.artifact_dir)
    assert isinstance(result, BuildArtifact), result
    assert result.runtime_defaults["default_workdir"] == "/srv"  # inherited from the parent template
    # The child's own start_cmd replaces the parent's start command and its probe.
    assert result.runtime_defaults["start_cmd"] == "exec httpd -f -p 8081 -h /srv"
    assert result.runtime_defaults["readiness"]["kind"] == "http"
    assert "RUNTIME_ENV" in result.runtime_defaults["default_env_keys"]
    assert (None, CacheStatus.STORED, None) in build.cache(CacheKind.LAYER)  # the parent's chain, kept for reuse
    with restore(result.artifact_dir, data_dir=data_dir) as vm:
        assert vm.exec(["cat", "/child.txt"]).stdout == APP_TEXT + b"yes\n"
        assert vm.exec(["cat", "/home/app/made.txt"]).stdout == b"made-in-/srv\n"  # the parent's files
        vm.agent.tcp_probe(8081)


def test_template_base_without_start_cmd_runs_the_parents_service(
    cold: tuple[Build, BuildArtifact | BuildFailed], executor: NativeExecutor, data_dir: Path, blob: Path
) -> None:
    """As a Docker image's CMD and HEALTHCHECK: a child without start_cmd starts the parent's service again
    (the child boots the parent's disk, not its memory) and waits for the parent's probe."""
    parent = cold[1]
    assert isinstance(parent, BuildArtifact)
    request = {
        "base_image": "tmpl_cold",
        "build_config": {"vcpus": 1, "memory_mib": 256},
        "steps": [{"action": "run", "command": "echo from-the-child > /srv/child.txt"}],
    }
    build, result = run_build(executor, data_dir, request, "tb_inherit", blob,
                              base_template_artifact=parent.artifact_dir)  # fmt: skip
    assert isinstance(result, BuildArtifact), result
    assert result.runtime_defaults["start_cmd"] == parent.runtime_defaults["start_cmd"]
    assert result.runtime_defaults["readiness"] == parent.runtime_defaults["readiness"]
    assert LogPhase.STARTUP in build.phases() and LogPhase.READINESS in build.phases()
    with restore(result.artifact_dir, data_dir=data_dir) as vm:
        vm.agent.tcp_probe(8080)  # the parent's httpd, started again in the child's build VM
        assert vm.agent.http_probe(8080, "/child.txt") == 200
        assert vm.exec(["cat", "/dev/shm/state"]).stdout == b"started\n"  # tmpfs: written by this start


def test_whole_build_skip_cache_bypasses_every_cache(
    cold: tuple[Build, BuildArtifact | BuildFailed], executor: NativeExecutor, data_dir: Path, base_ref: str,
    blob: Path,
) -> None:  # fmt: skip
    assert isinstance(cold[1], BuildArtifact)
    request = {
        "base_image": base_ref,
        "skip_cache": True,
        "build_config": {"vcpus": 1, "memory_mib": 256},
        "steps": [
            # An existing directory as destination without a trailing slash receives the file (Docker's rule).
            {"action": "copy", "sources": ["builder-context/step-1/src-0/app.txt"], "dst": "/tmp"},
            {"action": "copy_items", "items": [
                {"sources": ["builder-context/step-1/src-0/app.txt"], "dst": "/opt/a/", "user": "app"},
                {"sources": ["builder-context/step-1"], "dst": "/opt/tree"},
            ]},
        ],
        "build_context": {"files": [
            {"path": "builder-context/step-1/src-0/app.txt", "entry_type": "file", "blob_id": APP_BLOB},
        ]},
    }  # fmt: skip
    build, result = run_build(executor, data_dir, request, "tb_nocache", blob)
    assert isinstance(result, BuildArtifact), result
    layer = build.cache(CacheKind.LAYER)
    assert layer == [
        (None, CacheStatus.BYPASS, CacheReason.WHOLE_BUILD_SKIP_CACHE),
        (1, CacheStatus.BYPASS, CacheReason.WHOLE_BUILD_SKIP_CACHE),
        (2, CacheStatus.BYPASS, CacheReason.WHOLE_BUILD_SKIP_CACHE),
    ]
    assert build.cache(CacheKind.FINAL_ARTIFACT) == [(None, CacheStatus.BYPASS, CacheReason.WHOLE_BUILD_SKIP_CACHE)]
    with restore(result.artifact_dir, data_dir=data_dir) as vm:
        assert vm.exec(["cat", "/tmp/app.txt"]).stdout == APP_TEXT
        assert vm.exec(["stat", "-c", "%U %a", "/opt/a/app.txt"]).stdout.strip() == b"app 644"
        assert vm.exec(["cat", "/opt/tree/src-0/app.txt"]).stdout == APP_TEXT


def test_private_base_image_needs_the_right_credentials(executor: NativeExecutor, data_dir: Path, blob: Path) -> None:
    with running_registry("htpasswd") as private:
        ref = push_busybox_image(private, "private/busybox")
        assert private.credentials is not None
        user, password = private.credentials
        for auth, build_id in (
            (None, "tb_noauth"),
            ({"kind": "basic", "username": user, "password": "bad-pass-9f3k"}, "tb_bad"),
        ):
            request: dict[str, Any] = {"base_image": ref, "steps": [{"action": "run", "command": "true"}]}
            if auth is not None:
                request["base_image_auth"] = auth
            _, result = run_build(executor, data_dir, request, build_id, blob)
            assert isinstance(result, BuildFailed) and result.phase == FailurePhase.AUTH, result
            assert "bad-pass-9f3k" not in result.message and password not in result.message
        # The right credentials resolve and import the image (the build then fails fast in its first step).
        request = {"base_image": ref, "base_image_auth": {"kind": "basic", "username": user, "password": password},
                   "steps": [{"action": "run", "command": "exit 7"}], "build_config": {"memory_mib": 256}}  # fmt: skip
        build, result = run_build(executor, data_dir, request, "tb_goodauth", blob)
        assert isinstance(result, BuildFailed) and result.phase == FailurePhase.BUILD_STEP, result
        assert all(password not in e.message for e in build.events)


def test_start_command_may_daemonize_but_not_fail(executor: NativeExecutor, data_dir: Path, base_ref: str,
                                                  blob: Path) -> None:  # fmt: skip
    def request(start_cmd: str) -> dict[str, Any]:
        return {
            "base_image": base_ref,
            "build_config": {"vcpus": 1, "memory_mib": 256},
            "steps": [],
            "start_cmd": start_cmd,
            "runtime_config": {"readiness": {"kind": "tcp", "port": 8082, "interval_ms": 100, "startup_grace_secs": 0}},
        }

    # busybox httpd without -f forks into the background and the shell returns 0: that is a running service.
    _, result = run_build(executor, data_dir, request("httpd -p 8082 -h /"), "tb_daemon", blob)
    assert isinstance(result, BuildArtifact), result
    with restore(result.artifact_dir, data_dir=data_dir) as vm:
        vm.agent.tcp_probe(8082)

    build, failed = run_build(executor, data_dir, request("echo no-config-found >&2; exit 4"), "tb_badstart", blob)
    assert isinstance(failed, BuildFailed) and failed.phase == FailurePhase.READINESS
    assert "exited with code 4" in failed.message and "no-config-found" in failed.message
    assert any(e.phase == LogPhase.STARTUP and "no-config-found" in e.message for e in build.events)
