"""`amber vm`: boot a disk and run a command, snapshot a service, restore a snapshot (for people)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from amber.vm import AgentError, ExecResult, MicroVM, VMError, boot, restore

app = typer.Typer(no_args_is_help=True, help="Run, snapshot and restore microVMs.")
err = Console(stderr=True, soft_wrap=True, highlight=False)

DATA_DIR = typer.Option(Path(".amber"), "--data-dir", envvar="AMBER_DATA_DIR", help="Data directory.")


def _error(message: str) -> None:
    err.print(message, style="red", markup=False)


@contextmanager
def _step(message: str) -> Iterator[None]:
    """A spinner while a step runs, then its duration."""
    started = time.monotonic()
    with err.status(message):
        yield
    err.print(f"[dim]{message}: done in {time.monotonic() - started:.2f}s[/dim]")


def _to_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _to_stderr(data: bytes) -> None:
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()


def _exit_with_command(start: Callable[[], MicroVM], step: str, command: list[str]) -> NoReturn:
    """Start a VM (shown as ``step``), run ``command`` in it, close it and exit with the command's status."""
    try:
        with _step(step):
            vm = start()
        with vm:
            code = _run_command(vm, command)
    except VMError as e:
        _error(f"{e}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def _run_command(vm: MicroVM, command: list[str]) -> int:
    if not command:
        _error("no command given (put it after --)")
        return 2
    try:
        result: ExecResult = vm.exec(command, on_stdout=_to_stdout, on_stderr=_to_stderr)
    except AgentError as e:
        _error(f"{e}")
        return 127
    if result.signal is not None:
        name = signal.Signals(result.signal).name if result.signal < 65 else str(result.signal)
        err.print(f"[yellow]command killed by {name}[/yellow]")
        return 128 + result.signal
    return result.exit_code or 0


@app.command("run")
def run(
    disk: Path = typer.Argument(..., exists=True, dir_okay=False, help="Root disk image (ext4 or qcow2)."),
    command: list[str] = typer.Argument(None, help="Command to run (after --)."),
    cpus: int = typer.Option(1, "--cpus", min=1, max=64),
    memory: int = typer.Option(512, "--memory", min=64, help="Guest memory in MiB."),
    internet: bool = typer.Option(False, "--internet", help="Internet access (never the host nor other guests)."),
    data_dir: Path = DATA_DIR,
) -> None:
    """Boot DISK (never modified: the VM writes to a throwaway overlay), run the command, exit with its status."""
    _exit_with_command(lambda: boot(disk, data_dir=data_dir, cpus=cpus, memory_mib=memory, internet=internet),
                       "booting the VM", command or [])


@app.command("snapshot")
def snapshot(
    disk: Path = typer.Argument(..., exists=True, dir_okay=False, help="Root disk image (ext4 or qcow2)."),
    start_cmd: str = typer.Option(..., "--start-cmd", help="Shell command that starts the service."),
    ready_tcp: int = typer.Option(..., "--ready-tcp", min=1, max=65535, help="Port that answers when ready."),
    out: Path = typer.Option(..., "--out", help="Artifact directory to create."),
    ready_timeout: float = typer.Option(120.0, "--ready-timeout", help="Seconds to wait for the port."),
    cpus: int = typer.Option(1, "--cpus", min=1, max=64),
    memory: int = typer.Option(512, "--memory", min=64, help="Guest memory in MiB."),
    internet: bool = typer.Option(False, "--internet", help="Internet access (never the host nor other guests)."),
    data_dir: Path = DATA_DIR,
) -> None:
    """Boot DISK, start the service, wait until its TCP port accepts, and snapshot the running VM to OUT."""
    if out.exists():
        _error(f"--out {out} already exists")
        raise typer.Exit(2)
    try:
        with _step("booting the VM"):
            vm = boot(disk, data_dir=data_dir, cpus=cpus, memory_mib=memory, internet=internet)
        with vm:
            # The start command runs for the VM's whole life: its exec never returns before the snapshot.
            def service() -> None:
                with contextlib.suppress(VMError):  # ends when the VM is snapshotted or stopped
                    vm.exec(shell=start_cmd, on_stdout=_to_stderr, on_stderr=_to_stderr)

            threading.Thread(target=service, daemon=True).start()
            with _step(f"waiting for port {ready_tcp} in the guest"):
                deadline = time.monotonic() + ready_timeout
                while True:
                    try:
                        vm.agent.tcp_probe(ready_tcp, timeout=1.0)
                        break
                    except AgentError as e:
                        if time.monotonic() > deadline:
                            _error(f"not ready after {ready_timeout:.0f}s: {e}")
                            raise typer.Exit(1) from None
                        time.sleep(0.2)
            with _step("snapshotting"):
                artifact = vm.snapshot(out)
    except VMError as e:
        _error(f"{e}")
        raise typer.Exit(1) from None
    sizes = artifact.size_bytes()
    typer.echo(f"snapshot written to {artifact.directory}: state {sizes['state'] / 1e6:.1f} MB, "
               f"{sizes['allocated'] / 1e6:.0f} MB on disk, migration {artifact.snapshot_seconds * 1000:.0f} ms")


@app.command("restore")
def restore_cmd(
    artifact: Path = typer.Argument(..., help="Artifact directory written by `amber vm snapshot`."),
    command: list[str] = typer.Argument(None, help="Command to run (after --)."),
    data_dir: Path = DATA_DIR,
) -> None:
    """Restore a snapshot into a new sandbox, run the command in it, exit with its status."""
    _exit_with_command(lambda: restore(artifact, data_dir=data_dir), "restoring the snapshot", command or [])
