"""`amber serve`: the HTTP service with its in-process build workers."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from amber.cli.progress import timed_progress
from amber.guest.install import GuestSetupError, ensure_guest
from amber.settings import Settings, prepare_data_dir


def serve(
    data_dir: Path = typer.Option(None, "--data-dir", envvar="AMBER_DATA_DIR", help="Where Amber keeps everything."),
    port: int = typer.Option(3000, "--port", envvar="AMBER_PORT", help="TCP port on localhost."),
    host: str = typer.Option("127.0.0.1", "--host", envvar="AMBER_HOST", help="Address to listen on."),
    workers: int = typer.Option(None, "--workers", envvar="AMBER_WORKERS",
                                help="In-process build workers (default: from cores and memory)."),
) -> None:
    """Provision the guest (kernel, initramfs, agent) of a new data directory, run the database migrations, then
    serve the template API (default http://localhost:3000)."""
    import uvicorn

    from amber.server import create_server
    from amber.store.database import migrate

    settings = Settings()
    settings.port, settings.host = port, host
    if data_dir is not None:
        settings.data_dir = data_dir
    if workers is not None:
        settings.workers = workers
    prepare_data_dir(settings)
    if settings.resolved_workers:
        provision_guest(settings.data_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # registry requests are not service events
    migrate(settings.resolved_database_url)
    app = create_server(settings)
    typer.echo(f"amber: serving http://{settings.host}:{settings.port} (data in {settings.data_dir.resolve()}, "
               f"{settings.resolved_workers} build worker(s))", err=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10, ws_ping_interval=15.0, ws_ping_timeout=30.0)


def provision_guest(data_dir: Path) -> None:
    """Build the guest into ``data_dir`` once (what ``amber setup-guest`` does), before any build is accepted,
    with progress on the terminal; nothing to do when it is there. Exits 1 when it cannot be built: a server whose
    every build would fail is worse than none. (A process running no build workers needs no guest.)"""
    progress = timed_progress("amber: guest: ")

    try:
        image, built = ensure_guest(data_dir, progress)
    except GuestSetupError as error:
        typer.echo(f"amber: the guest for {data_dir} could not be built: {error}", err=True)
        raise typer.Exit(1) from None
    if built:
        typer.echo(f"amber: guest ready: kernel {image.kernel_release}, agent {image.agent_sha256[:12]}", err=True)
