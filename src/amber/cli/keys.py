"""`amber keys` commands."""

from __future__ import annotations

from pathlib import Path

import typer

from amber.contract.template_refs import SLUG_RE, SYSTEM_NAMESPACE
from amber.settings import Settings
from amber.store import keys
from amber.store.database import Database, migrate

app = typer.Typer(no_args_is_help=True, help="API keys.")


@app.callback()
def _group() -> None:
    """Manage API keys (stored hashed; a key is shown once, when created)."""


@app.command("create")
def create(
    namespace: str = typer.Option("default", "--namespace", help="Namespace slug the key acts in (created if new)."),
    data_dir: Path = typer.Option(None, "--data-dir", envvar="AMBER_DATA_DIR", help="Amber's data directory."),
) -> None:
    """Create an API key and print it (only the key, on stdout)."""
    if not SLUG_RE.fullmatch(namespace) or namespace == SYSTEM_NAMESPACE:
        typer.echo(f"invalid namespace {namespace!r}: use lower-case letters, digits and single '-' "
                   f"(and not {SYSTEM_NAMESPACE!r})", err=True)
        raise typer.Exit(2)
    settings = Settings()
    if data_dir is not None:
        settings.data_dir = data_dir
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as session:
            key = keys.create_api_key(session, namespace)
    finally:
        db.dispose()
    typer.echo(key)
