"""`amber serve`: the HTTP service with its in-process build workers."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    data_dir: Path = typer.Option(None, envvar="AMBER_DATA_DIR", help="Where Amber keeps everything."),
    port: int = typer.Option(3000, envvar="AMBER_PORT"),
) -> None:
    """Start the template service."""
    typer.echo("amber serve: not implemented yet", err=True)
    raise typer.Exit(1)
