"""`amber serve`: the HTTP service with its in-process build workers."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from amber.settings import Settings


def serve(
    data_dir: Path = typer.Option(None, "--data-dir", envvar="AMBER_DATA_DIR", help="Where Amber keeps everything."),
    port: int = typer.Option(3000, "--port", envvar="AMBER_PORT", help="TCP port on localhost."),
    host: str = typer.Option("127.0.0.1", "--host", envvar="AMBER_HOST", help="Address to listen on."),
    workers: int = typer.Option(None, "--workers", envvar="AMBER_WORKERS",
                                help="In-process build workers (default: from cores and memory)."),
) -> None:
    """Run the database migrations, then serve the template API (default http://localhost:3000)."""
    import uvicorn

    from amber.server import create_server
    from amber.store.database import migrate

    settings = Settings()
    settings.port, settings.host = port, host
    if data_dir is not None:
        settings.data_dir = data_dir
    if workers is not None:
        settings.workers = workers
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # registry requests are not service events
    migrate(settings.resolved_database_url)
    app = create_server(settings)
    typer.echo(f"amber: serving http://{settings.host}:{settings.port} (data in {settings.data_dir.resolve()}, "
               f"{settings.resolved_workers} build worker(s))", err=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10)
