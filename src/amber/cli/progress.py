"""Progress lines of the long setup commands on the terminal (stderr): ``<prefix><message> (<seconds>s)``."""

from __future__ import annotations

import time
from collections.abc import Callable

import typer


def timed_progress(prefix: str) -> Callable[[str], None]:
    """A progress callback that prints each message after ``prefix`` with the seconds since this call."""
    started = time.monotonic()

    def progress(message: str) -> None:
        typer.echo(f"{prefix}{message} ({time.monotonic() - started:.1f}s)", err=True)

    return progress
