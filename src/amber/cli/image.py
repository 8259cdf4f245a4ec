"""`amber image` commands: import an OCI image from a registry into an ext4 root disk."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from amber.builds.image_import import import_image
from amber.contract.errors import InvalidReferenceError
from amber.oci.cache import layer_cache_dir
from amber.oci.credentials import BasicCredentials
from amber.oci.errors import ImageImportError
from amber.oci.manifest import Descriptor
from amber.oci.progress import ImportProgress
from amber.rootfs.ext4 import DEFAULT_MIN_SIZE_MIB
from amber.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="image commands.")


@app.callback()
def _group() -> None:
    """Command group (commands are added by their owners)."""


class _BytesColumn(DownloadColumn):
    """Byte counts for layer rows; nothing for the phase row (which has no total)."""

    def render(self, task: Task) -> Text:
        return Text("") if task.total is None else super().render(task)


class _SpeedColumn(TransferSpeedColumn):
    def render(self, task: Task) -> Text:
        return Text("") if task.total is None else super().render(task)


class _RichProgress(ImportProgress):
    """Bytes per layer as rich progress bars, and the current phase."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}
        self._phase = progress.add_task("resolving", total=None, start=True)

    def phase(self, name: str) -> None:
        labels = {"resolve": "resolving", "pull": "pulling layers", "unpack": "unpacking", "ext4": "writing ext4"}
        self._progress.update(self._phase, description=labels.get(name, name))

    def layer_started(self, descriptor: Descriptor, *, cached: bool) -> None:
        label = f"{descriptor.short_digest} {'(cached)' if cached else ''}"
        task = self._progress.add_task(label, total=descriptor.size, completed=descriptor.size if cached else 0)
        self._tasks[descriptor.digest] = task

    def layer_advanced(self, descriptor: Descriptor, nbytes: int) -> None:
        self._progress.advance(self._tasks[descriptor.digest], nbytes)

    def layer_finished(self, descriptor: Descriptor) -> None:
        task = self._tasks[descriptor.digest]
        self._progress.update(task, completed=descriptor.size)


@app.command("import")
def import_command(
    reference: str = typer.Argument(..., help="Image reference, e.g. 127.0.0.1:5000/team/app:1.0"),
    output: Path = typer.Option(..., "--output", "-o", help="Path of the ext4 disk image to write"),
    platform: str | None = typer.Option(None, "--platform", help="os/arch or os/arch/variant; default: this host"),
    username: str | None = typer.Option(None, "--username", "-u", help="Registry user name"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the registry password from stdin"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Amber data directory (layer cache)"),
    min_size_mib: int = typer.Option(DEFAULT_MIN_SIZE_MIB, "--min-size-mib", help="Minimum disk size in MiB"),
    insecure_registry: list[str] = typer.Option(
        [], "--insecure-registry", help="Registry host allowed over plain HTTP (loopback always is)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display, only the summary"),
    disk_cache: bool = typer.Option(True, "--disk-cache/--no-disk-cache", help="Reuse disks of the same digest"),
) -> None:
    """Import REFERENCE from its registry into an ext4 root disk, with a layer cache under the data dir."""
    err = Console(stderr=True)
    credentials: BasicCredentials | None = None
    if password_stdin and not username:
        err.print("error: --password-stdin needs --username")
        raise typer.Exit(2)
    if username:
        if not password_stdin:
            err.print("error: --username needs --password-stdin (passwords are never taken as arguments)")
            raise typer.Exit(2)
        password = sys.stdin.readline().rstrip("\r\n")
        credentials = BasicCredentials(username, password)
    data = data_dir or get_settings().data_dir
    cache = layer_cache_dir(data)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        _BytesColumn(),
        _SpeedColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=True, disable=quiet) as progress:
            result = asyncio.run(
                import_image(
                    reference, output, cache_dir=cache, credentials=credentials, platform=platform,
                    progress=_RichProgress(progress), min_size_mib=min_size_mib,
                    insecure_registries=insecure_registry,
                    disk_cache_dir=data / "cache" / "disks" if disk_cache else None,
                )
            )
    except (ImageImportError, InvalidReferenceError) as exc:
        err.print(f"error: {exc.message}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    typer.echo(result.summary())
