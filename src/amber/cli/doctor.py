"""`amber doctor`: report what this host lacks."""

from __future__ import annotations

import typer


def doctor() -> None:
    """Report what is missing (KVM, QEMU, guest kernel, dockerd, disk space)."""
    typer.echo("amber doctor: not implemented yet", err=True)
    raise typer.Exit(1)
