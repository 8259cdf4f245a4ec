"""`amber setup-guest`: build the guest kernel, initramfs and agent once into the data directory."""

from __future__ import annotations

from pathlib import Path

import typer

from amber.cli.progress import timed_progress
from amber.guest.install import GuestSetupError, ensure_guest


def setup_guest(
    data_dir: Path = typer.Option(Path(".amber"), envvar="AMBER_DATA_DIR", help="Data directory."),
) -> None:
    """Build (once) the guest kernel, initramfs and agent under DATA_DIR/guest; a second run does nothing."""
    progress = timed_progress("setup-guest: ")

    try:
        image, built = ensure_guest(data_dir, progress)
    except GuestSetupError as e:
        typer.echo(f"setup-guest: {e}", err=True)
        raise typer.Exit(1) from None
    state = "built" if built else "up to date"
    typer.echo(f"setup-guest: guest {state}: kernel {image.kernel_release} ({image.kernel_version}), "
               f"{len(image.modules)} modules, agent {image.agent_sha256[:12]}")
