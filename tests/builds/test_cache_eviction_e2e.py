"""Eviction end to end: build a template through the real pipeline (loopback registry, real QEMU), evict the
whole cache with ``amber cache prune``, then build the same template again: every evicted step is rebuilt and
the result still works. The first template's artifact is never touched by eviction. Two VM builds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from amber.builds.executor import BuildArtifact
from amber.builds.pipeline import NativeExecutor
from amber.builds.pipeline.prune import scan, usage
from amber.cli import app
from amber.contract.logs import CacheKind, CacheStatus
from amber.vm import TemplateArtifact, restore
from tests.builds.test_pipeline import (  # noqa: F401 - module fixtures, shared by name
    APP_TEXT,
    base_ref,
    blob,
    data_dir,
    executor,
    registry,
    request_for,
    run_build,
)

pytestmark = pytest.mark.vm


def test_rebuild_after_full_eviction_rebuilds_every_step_and_works(
    executor: NativeExecutor, data_dir: Path, base_ref: str, blob: Path  # noqa: F811
) -> None:
    build, first = run_build(executor, data_dir, request_for(base_ref), "tb_evict1", blob)
    assert isinstance(first, BuildArtifact), first
    before = set(scan(data_dir).entries)
    kinds = {entry.split(":", 1)[0] for entry in before}
    assert {"blob", "build"} <= kinds
    assert sum(1 for e in before if e.startswith("build:layers/")) == 4
    assert sum(1 for e in before if e.startswith("build:final/")) == 1
    kept = {p.relative_to(first.artifact_dir): p.stat().st_size for p in first.artifact_dir.rglob("*") if p.is_file()}

    prune = ["cache", "prune", "--max-bytes", "1", "--min-idle-secs", "0", "--data-dir", str(data_dir)]
    result = CliRunner().invoke(app, prune)
    assert result.exit_code == 0, result.output
    # the template artifact hard-links the whole chain: evicting it would free nothing, so only the blobs go
    assert usage(data_dir)[0] == 0, result.output
    assert not any(e.startswith("blob:") for e in scan(data_dir).entries), result.output
    # ... and the artifact itself is untouched: same files, every checksum still matches
    assert {p.relative_to(first.artifact_dir): p.stat().st_size for p in first.artifact_dir.rglob("*")
            if p.is_file()} == kept  # fmt: skip
    TemplateArtifact.load(first.artifact_dir, verify_checksums=True)

    # the template is deleted (as the service does): now the cache holds the only links, and all of it goes
    shutil.rmtree(first.artifact_dir)
    result = CliRunner().invoke(app, prune)
    assert result.exit_code == 0, result.output
    assert "evicted build:base/" in result.output and "evicted build:final/" in result.output
    assert set(scan(data_dir).entries) == set(), result.output
    assert usage(data_dir)[0] == 0

    build, second = run_build(executor, data_dir, request_for(base_ref), "tb_evict2", blob)
    assert isinstance(second, BuildArtifact), second
    layer_events = build.cache(CacheKind.LAYER)
    assert layer_events[0][:2] == (None, CacheStatus.MISS)  # the base disk is imported again (layers re-pulled)
    steps = [c for c in layer_events if c[0] is not None]
    assert [c[1] for c in steps if c[1] != CacheStatus.STORED] == [CacheStatus.MISS] * 4  # every step rebuilt
    assert [c[0] for c in steps if c[1] == CacheStatus.STORED] == [1, 2, 3, 4]
    assert second.cache_summary["final_artifact_stores"] == 1
    with restore(second.artifact_dir, data_dir=data_dir) as vm:
        vm.agent.tcp_probe(8080)
        assert vm.exec(["cat", "/srv/app.txt"]).stdout == APP_TEXT
        assert vm.exec(["cat", "/home/app/made.txt"]).stdout == b"made-in-/srv\n"
    assert sum(1 for e in scan(data_dir).entries if e.startswith("build:layers/")) == 4
