"""`amber keys` commands."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import typer
from sqlalchemy.orm import Session

from amber.contract.template_refs import SLUG_RE, SYSTEM_NAMESPACE
from amber.settings import Settings, prepare_data_dir
from amber.store import keys
from amber.store.database import Database, migrate
from amber.store.errors import Invalid

T = TypeVar("T")
DATA_DIR = typer.Option(None, "--data-dir", envvar="AMBER_DATA_DIR", help="Amber's data directory.")

app = typer.Typer(no_args_is_help=True, help="API keys.")


@app.callback()
def _group() -> None:
    """Manage API keys (stored hashed; a key is shown once, when created)."""


@app.command("create")
def create(
    namespace: str = typer.Option("default", "--namespace", help="Namespace slug the key acts in (created if new)."),
    data_dir: Path = DATA_DIR,
) -> None:
    """Create an API key and print it (only the key, on stdout)."""
    if not SLUG_RE.fullmatch(namespace) or namespace == SYSTEM_NAMESPACE:
        typer.echo(f"invalid namespace {namespace!r}: use lower-case letters, digits and single '-' "
                   f"(and not {SYSTEM_NAMESPACE!r})", err=True)
        raise typer.Exit(2)
    typer.echo(_in_database(data_dir, lambda session: keys.create_api_key(session, namespace)))


@app.command("list")
def list_keys(
    namespace: str = typer.Option(None, "--namespace", help="Only the keys of this namespace."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per key instead of a table."),
    data_dir: Path = DATA_DIR,
) -> None:
    """List API keys: id, namespace, the key's first characters, created, last used, revoked. Never the key."""
    found = _in_database(data_dir, lambda session: keys.list_keys(session, namespace))
    if as_json:
        for info in found:
            typer.echo(json.dumps(_info_json(info)))
        return
    typer.echo(f"{'ID':20} {'NAMESPACE':20} {'PREFIX':13} {'CREATED':20} {'LAST USED':20} REVOKED")
    for info in found:
        typer.echo(f"{info.key_id:20} {info.namespace:20} {(info.prefix or '-') + '…':13} "
                   f"{_when(info.created_at):20} {_when(info.last_used_at):20} {_when(info.revoked_at)}")


@app.command("revoke")
def revoke(
    key: str = typer.Argument(..., metavar="KEY_ID|PREFIX", help="A key id (key_…), the key, or its first "
                              f"{keys.MIN_REVOKE_PREFIX_CHARS}+ characters (one key only)."),
    data_dir: Path = DATA_DIR,
) -> None:
    """Revoke an API key: every serving process refuses it (401) within a second."""
    try:
        info = _in_database(data_dir, lambda session: keys.revoke_key(session, key))
    except Invalid as e:
        typer.echo(f"not revoked: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {info.key_id} (namespace {info.namespace}) at {_when(info.revoked_at)}")


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "-"


def _info_json(info: keys.KeyInfo) -> dict[str, str | None]:
    return {"id": info.key_id, "namespace": info.namespace, "prefix": info.prefix,
            "created_at": _when(info.created_at), "last_used_at": _when(info.last_used_at) if info.last_used_at
            else None, "revoked_at": _when(info.revoked_at) if info.revoked_at else None}  # fmt: skip


def _in_database(data_dir: Path | None, fn: Callable[[Session], T]) -> T:
    with _database(data_dir) as db, db.session() as session:
        return fn(session)


@contextmanager
def _database(data_dir: Path | None) -> Iterator[Database]:
    settings = Settings()
    if data_dir is not None:
        settings.data_dir = data_dir
    prepare_data_dir(settings)
    migrate(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        yield db
    finally:
        db.dispose()
