"""`amber keys` commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="keys commands.")


@app.callback()
def _group() -> None:
    """Command group (commands are added by their owners)."""
