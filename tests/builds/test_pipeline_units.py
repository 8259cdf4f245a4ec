"""Host-side pieces of the pipeline without a VM: the cache store's claim/publish protocol, the cached runner,
COPY semantics, the readiness loop, credentials conversion, output line splitting, and the artifact metadata."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import multiprocessing
from pathlib import Path

import pytest

from amber.builds.artifact_metadata import (
    ARTIFACT_METADATA,
    ArtifactMetadata,
    ArtifactMetadataError,
    read_artifact_metadata,
    write_artifact_metadata,
)
from amber.builds.executor import BuildInputs
from amber.builds.pipeline.context import BuildContextFiles, ContextError, GuestDir, GuestFile, copy_operations
from amber.builds.pipeline.credentials import base_image_credentials, to_registry_credentials
from amber.builds.pipeline.events import BuildLog
from amber.builds.pipeline.guest_ops import LineSplitter, agent_user
from amber.builds.pipeline.readiness import NotReady, wait_until_ready
from amber.builds.pipeline.runner import CachedRunner, Entry
from amber.builds.pipeline.store import CacheStore, EntryHold
from amber.builds.planning.cache import CacheDecision
from amber.builds.planning.runtime import Readiness, RuntimeDefaults
from amber.builds.planning.steps import CopyOp
from amber.contract.logs import CacheKind, CacheReason, CacheStatus, LogEvent, LogKind
from amber.contract.request import parse_create_request
from amber.contract.sources import BuildContextFile
from amber.oci.credentials import BasicCredentials

# --- cache store ------------------------------------------------------------------------------------------------


def test_claim_publish_release(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    path = store.layer_path("sha256:" + "1" * 64)
    claim = store.claim(path)
    assert claim is not None
    assert store.claim(path) is None  # held by us (a second claimant builds privately)
    path.write_bytes(b"layer")
    assert not store.is_complete(path)  # invisible until published
    claim.publish()
    claim.release()
    assert store.is_complete(path) and path.read_bytes() == b"layer"
    assert store.claim(path) is None  # complete entries are never claimed (immutable)


def test_unpublished_entry_is_removed_on_release(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    path = store.layer_path("sha256:" + "2" * 64)
    claim = store.claim(path)
    assert claim is not None
    path.write_bytes(b"half")
    claim.release()
    assert not path.exists() and not store.is_complete(path)


def _hold_lock(path: str, ready: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event) -> None:
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        ready.set()
        done.wait(30)


def test_debris_of_a_dead_build_is_cleared_but_a_live_claim_is_respected(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    path = store.layer_path("sha256:" + "3" * 64)
    path.write_bytes(b"debris from a killed build")  # no .ok, no lock holder
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(f"{path}.lock", ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        assert store.claim(path) is None  # another live process is building it
        assert path.exists()
    finally:
        done.set()
        holder.join(30)
    claim = store.claim(path)
    assert claim is not None and not path.exists()  # debris removed once nobody holds the lock
    claim.release()


# --- COPY semantics ---------------------------------------------------------------------------------------------


def _inline(path: str, data: bytes, mode: str | None = "0644") -> BuildContextFile:
    return BuildContextFile(path=path, entry_type="file", content_base64=base64.b64encode(data).decode(), mode=mode)


def test_copy_operations_follow_docker_rules(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"from-blob")
    ctx = BuildContextFiles(
        [
            _inline("c/a.txt", b"a"),
            BuildContextFile(path="c/d", entry_type="dir", mode="0700"),
            BuildContextFile(path="c/d/b.bin", entry_type="file", blob_id="sha256:x", mode="0755"),
        ],
        {"sha256:x": blob},
    )
    # single file to a file path, relative to WORKDIR
    ops = copy_operations(CopyOp(("c/a.txt",), "out.txt"), ctx, "/w")
    assert [(o.path, o.mode) for o in ops] == [("/w/out.txt", 0o644)]
    # several sources → into the directory; --chmod and --chown apply to everything
    ops = copy_operations(CopyOp(("c/a.txt", "c/d"), "/dst", user="app", mode=0o600), ctx, "/")
    assert [(type(o).__name__, o.path, o.mode, o.owner) for o in ops] == [
        ("GuestFile", "/dst/a.txt", 0o600, "app"),
        ("GuestDir", "/dst", 0o600, "app"),
        ("GuestFile", "/dst/b.bin", 0o600, "app"),
    ]
    # a directory source copies its contents; the implied parent "c" is a directory too
    ops = copy_operations(CopyOp(("c",), "/t/"), ctx, "/")
    kinds = {o.path: o for o in ops}
    assert isinstance(kinds["/t"], GuestDir) and isinstance(kinds["/t/d"], GuestDir) and kinds["/t/d"].mode == 0o700
    file_op = kinds["/t/d/b.bin"]
    assert isinstance(file_op, GuestFile) and file_op.source.read() == b"from-blob" and file_op.mode == 0o755
    with pytest.raises(ContextError, match="not in build_context"):
        copy_operations(CopyOp(("nope",), "/x"), ctx, "/")


def test_missing_blob_is_a_clear_error() -> None:
    with pytest.raises(ContextError, match="was not uploaded"):
        BuildContextFiles([BuildContextFile(path="a", entry_type="file", blob_id="sha256:missing")], {})


# --- readiness loop ---------------------------------------------------------------------------------------------


def test_readiness_retries_until_the_probe_passes() -> None:
    calls: list[float] = []

    async def probe(timeout: float) -> str | None:
        calls.append(timeout)
        return None if len(calls) >= 3 else "connection refused"

    readiness = Readiness(kind="tcp", port=1, timeout_secs=30, interval_ms=1, startup_grace_secs=0)
    assert asyncio.run(wait_until_ready(readiness, probe, asyncio.Event())) == 3


def test_readiness_times_out_with_the_last_reason() -> None:
    now = [0.0]

    async def probe(timeout: float) -> str | None:
        now[0] += 1.0  # every attempt "takes" a second of the fake clock
        return "connection refused"

    readiness = Readiness(kind="tcp", port=9, timeout_secs=3, interval_ms=1, startup_grace_secs=0)
    with pytest.raises(NotReady, match=r"tcp port 9 did not pass within 3 s .* connection refused"):
        asyncio.run(wait_until_ready(readiness, probe, asyncio.Event(), clock=lambda: now[0]))


def test_readiness_stops_on_cancel() -> None:
    async def go() -> None:
        cancel = asyncio.Event()
        cancel.set()

        async def probe(timeout: float) -> str | None:
            return "never"

        await wait_until_ready(Readiness(kind="tcp", port=1, startup_grace_secs=5), probe, cancel)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(go())


# --- the cached runner -------------------------------------------------------------------------------------------


class _Events:
    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    async def emit(self, event: LogEvent) -> None:
        self.events.append(event)

    def statuses(self) -> list[tuple[int | None, CacheStatus | None, CacheReason | None]]:
        return [(e.step_index, e.cache_status, e.cache_reason) for e in self.events if e.kind == LogKind.CACHE]


def test_cached_runner_stores_a_miss_and_serves_the_hit_without_making_it(tmp_path: Path) -> None:
    store, made = CacheStore(tmp_path / "cache"), []
    work = tmp_path / "work"
    work.mkdir()

    async def make(target: Path) -> None:
        made.append(target)
        target.write_bytes(b"disk")

    async def go() -> None:
        for build in ("first", "second"):
            events, holds = _Events(), list[EntryHold]()
            runner = CachedRunner(store, BuildLog(events.emit, 0), holds)
            entry = Entry(CacheKind.LAYER, store.base_path("sha256:" + "3" * 64), CacheDecision(), "base disk", "img")
            result = await runner.run(entry, work / f"{build}.raw", make)
            assert result.hold is not None and result.path.read_bytes() == b"disk"
            if build == "first":
                assert not result.hit and events.statuses() == [
                    (None, CacheStatus.MISS, CacheReason.MISSING_OR_INCOMPATIBLE), (None, CacheStatus.STORED, None)]
                assert entry.path.samefile(result.path)  # linked, not copied
            else:
                assert result.hit and result.path == entry.path and events.statuses() == [(None, CacheStatus.HIT, None)]
            for hold in holds:
                hold.release()

    asyncio.run(go())
    assert made == [work / "first.raw"]  # the hit ran nothing


def test_cached_runner_keeps_bypassed_and_unparented_results_private(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    work = tmp_path / "work"
    work.mkdir()

    async def make(target: Path) -> None:
        target.write_bytes(b"layer")

    async def go() -> list[tuple[int | None, CacheStatus | None, CacheReason | None]]:
        events, holds = _Events(), list[EntryHold]()
        runner = CachedRunner(store, BuildLog(events.emit, 2), holds)
        bypass = Entry(CacheKind.LAYER, store.layer_path("sha256:" + "4" * 64),
                       CacheDecision(CacheReason.BUILDER_CACHE_BOUNDARY), "step 1/2", "RUN x", step=1)
        orphan = Entry(CacheKind.LAYER, store.layer_path("sha256:" + "5" * 64), CacheDecision(), "step 2/2",
                       "RUN y", parent=None, chained=True, step=2)  # fmt: skip
        for entry, name in ((bypass, "a"), (orphan, "b")):
            result = await runner.run(entry, work / name, make)
            assert result.hold is None and not result.hit and result.path == work / name
            assert not entry.path.exists() and not store.is_complete(entry.path)
        assert holds == []
        return events.statuses()

    assert asyncio.run(go()) == [(1, CacheStatus.BYPASS, CacheReason.BUILDER_CACHE_BOUNDARY),
                                 (2, CacheStatus.MISS, CacheReason.MISSING_OR_INCOMPATIBLE)]  # fmt: skip


def test_cached_runner_leaves_an_entry_another_build_holds_to_it(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    path = store.base_path("sha256:" + "6" * 64)
    other = store.claim(path)  # another build is storing the same entry
    assert other is not None
    (tmp_path / "mine.raw").write_bytes(b"mine")

    async def go() -> Path | None:
        events, holds = _Events(), list[EntryHold]()
        runner = CachedRunner(store, BuildLog(events.emit, 0), holds)
        entry = Entry(CacheKind.LAYER, path, CacheDecision(), "base disk", "img")
        stored = await runner.store_result(entry, tmp_path / "mine.raw")
        assert holds == [] and all(s != CacheStatus.STORED for _, s, _ in events.statuses())
        return stored.path if stored is not None else None

    assert asyncio.run(go()) is None
    other.release()


# --- credentials, users, output ---------------------------------------------------------------------------------


def test_credentials_from_every_form() -> None:
    req = parse_create_request(
        {"base_image": "127.0.0.1:5000/a:1", "base_image_auth": {"kind": "basic", "username": "u", "password": "p"}}
    )
    assert to_registry_credentials(req.base_image_auth) == BasicCredentials("u", "p")
    assert to_registry_credentials({"kind": "basic", "username": "u", "password": "p"}) == BasicCredentials("u", "p")
    via_registry = parse_create_request(
        {"base_image": "127.0.0.1:5000/a:1",
         "registry_auth": [{"registry": "127.0.0.1:5000", "auth": {"kind": "basic", "username": "r", "password": "s"}}]}
    )  # fmt: skip
    found = base_image_credentials("127.0.0.1:5000/a:1", BuildInputs.of(via_registry))
    assert found == BasicCredentials("r", "s")
    assert base_image_credentials("ghcr.io/a/b", BuildInputs.of(via_registry)) is None
    assert "p" not in repr(to_registry_credentials(req.base_image_auth))


def test_agent_user_spells_root_numerically() -> None:
    assert [agent_user(u) for u in ("", "root", "0", "app", "1000:50")] == ["0:0", "0:0", "0:0", "app", "1000:50"]


def test_line_splitter_keeps_partial_lines_until_flush() -> None:
    lines: list[str] = []
    splitter = LineSplitter(lines.append)
    splitter.feed(b"one\ntw")
    splitter.feed(b"o\r\nthr")
    assert lines == ["one", "two"]
    splitter.flush()
    assert lines == ["one", "two", "thr"]


# --- amber-artifact.json ------------------------------------------------------------------------------------------


def test_artifact_metadata_reads_back_what_was_written(tmp_path: Path) -> None:
    """The one writer and the one reader agree, env values included (they live only in this file)."""
    runtime = RuntimeDefaults(user="app", workdir="/srv", env={"PATH": "/bin", "TOKEN": "v"}, start_cmd="srv",
                              readiness=Readiness(kind="command", command="true", startup_grace_secs=0),
                              readiness_from_healthcheck=True)  # fmt: skip
    written = ArtifactMetadata(runtime=runtime, oci_metadata={"image_digest": "sha256:" + "9" * 64},
                               source_digest="sha256:s", dockerfile_digest="sha256:d", context_digest=None)  # fmt: skip
    write_artifact_metadata(tmp_path, written)
    assert read_artifact_metadata(tmp_path) == written
    stored = json.loads((tmp_path / ARTIFACT_METADATA).read_text())
    assert stored["runtime_defaults"]["default_env_keys"] == ["PATH", "TOKEN"] and stored["runtime_env"]["TOKEN"] == "v"
    with pytest.raises(ArtifactMetadataError, match=r"amber-artifact\.json"):
        read_artifact_metadata(tmp_path / "missing")
    (tmp_path / ARTIFACT_METADATA).write_text("[]")
    with pytest.raises(ArtifactMetadataError, match="not template artifact metadata"):
        read_artifact_metadata(tmp_path)
