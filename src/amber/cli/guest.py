"""`amber setup-guest`: build the guest kernel, initramfs and agent once into the data directory."""

from __future__ import annotations

from pathlib import Path

import typer


def setup_guest(
    data_dir: Path = typer.Option(Path(".amber"), envvar="AMBER_DATA_DIR", help="Data directory."),
) -> None:
    """Build (once) the guest kernel, initramfs and agent under DATA_DIR/guest."""
    typer.echo("setup-guest: nothing to build yet")
