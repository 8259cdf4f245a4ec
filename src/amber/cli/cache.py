"""`amber cache` commands: how much the caches hold, and least-recently-used eviction on demand."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from amber.builds.pipeline.prune import prune as prune_caches
from amber.builds.pipeline.prune import usage as cache_usage
from amber.settings import Settings
from amber.sweep import sweep

app = typer.Typer(no_args_is_help=True, help="Build and image caches under <data_dir>/cache.")

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``20G``, ``512MiB``, ``1000`` → bytes (binary units)."""
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise typer.BadParameter(f"not a size: {text!r} (use e.g. 20G, 512M or a number of bytes)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _settings(data_dir: Path | None) -> Settings:
    settings = Settings()
    if data_dir is not None:
        settings.data_dir = data_dir
    return settings


@app.callback()
def _group() -> None:
    """Cache sizes and eviction (the server also evicts after every build)."""


@app.command("usage")
def usage(
    data_dir: Path = typer.Option(None, "--data-dir", envvar="AMBER_DATA_DIR", help="Amber's data directory."),
) -> None:
    """Bytes each cache could free (files shared with template artifacts count as nothing) and the limit; first
    removes what dead Amber processes left (processes, mounts, staging directories) and lists what it cannot."""
    settings = _settings(data_dir)
    swept = sweep(settings.data_dir)
    if not swept.empty:
        typer.echo(f"swept what dead Amber processes left: {swept.summary()}", err=True)
    total, kinds = cache_usage(settings.data_dir.resolve())
    for kind in kinds:
        typer.echo(f"{kind.kind:<16} {kind.entries:>6} entries  {_human(kind.bytes):>10}")
    limit = settings.resolved_cache_max_bytes
    typer.echo(f"{'total':<16} {sum(k.entries for k in kinds):>6} entries  {_human(total):>10}"
               f"  (limit {_human(limit) if limit else 'none'})")  # fmt: skip
    for path, reason in swept.failed:
        typer.echo(f"cannot remove {path}: {reason}")
    if swept.failed:
        raise typer.Exit(1)


@app.command("prune")
def prune(
    max_bytes: str = typer.Option(None, "--max-bytes", help="Size to prune down to, e.g. 10G "
                                  "(default: AMBER_CACHE_MAX_BYTES or the server's default; 0 = only invalid "
                                  "entries and debris)."),
    min_idle_secs: float = typer.Option(None, "--min-idle-secs", help="Keep entries used more recently than this "
                                        "(default: AMBER_CACHE_MIN_IDLE_SECS, 300)."),
    data_dir: Path = typer.Option(None, "--data-dir", envvar="AMBER_DATA_DIR", help="Amber's data directory."),
) -> None:  # fmt: skip
    """Evict least recently used cache entries (and everything built on them) until under the limit.

    Entries a running build or import uses are never evicted; template artifacts are never touched."""
    settings = _settings(data_dir)
    limit = parse_size(max_bytes) if max_bytes is not None else settings.resolved_cache_max_bytes
    idle = settings.cache_min_idle_secs if min_idle_secs is None else max(0.0, min_idle_secs)
    report = prune_caches(settings.data_dir.resolve(), max_bytes=limit, min_idle_secs=idle)
    if report.busy:
        typer.echo("another prune is running; nothing done", err=True)
        raise typer.Exit(1)
    for entry in report.evicted:
        typer.echo(f"evicted {entry}")
    typer.echo(f"evicted {len(report.evicted)} entries ({len(report.skipped)} in use, {report.debris} debris "
               f"removed): {_human(report.bytes_before)} -> {_human(report.bytes_after)}"
               f" (limit {_human(limit) if limit else 'none'})")  # fmt: skip
