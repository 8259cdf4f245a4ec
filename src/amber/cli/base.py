"""`amber setup-base`: build (once) the builtin template ``nullspace/base`` into the data directory."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from amber.builds.builtin import BuiltinError, ensure_builtin
from amber.cli.progress import timed_progress


def setup_base(
    data_dir: Path = typer.Option(Path(".amber"), envvar="AMBER_DATA_DIR", help="Data directory."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Start from scratch (debootstrap again): picks up "
                                                          "Debian package updates."),
) -> None:
    """Build (once) the builtin template nullspace/base under DATA_DIR/builtin/base; a second run does nothing.
    Rebuilt when its definition or the guest (kernel, agent, QEMU) changes. Needs `amber setup-guest` first."""
    started = time.monotonic()
    progress = timed_progress("setup-base: ")

    try:
        result = ensure_builtin(data_dir, progress=progress, rebuild=rebuild)
    except BuiltinError as e:
        typer.echo(f"setup-base: {e}", err=True)
        raise typer.Exit(1) from None
    artifact = result.artifact
    if not result.built:
        state = "up to date"
    else:
        reused = "tree and disk cached" if result.disk_cached else "tree cached" if result.tree_cached else "fresh"
        state = f"built in {time.monotonic() - started:.1f}s ({reused})"
    typer.echo(f"setup-base: nullspace/{artifact.name} {state}: {artifact.artifact_id}, "
               f"{artifact.size_bytes / 2**20:.0f} MiB, {artifact.directory}")
