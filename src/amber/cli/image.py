"""`amber image` commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="image commands.")


@app.callback()
def _group() -> None:
    """Command group (commands are added by their owners)."""
