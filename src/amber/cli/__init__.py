"""The ``amber`` command. Each command group lives in its own module and holds no business logic."""

from __future__ import annotations

import typer

from amber.cli import base, cache, doctor, guest, image, keys, serve, vm

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Amber microVM template builder.")
app.add_typer(image.app, name="image")
app.add_typer(vm.app, name="vm")
app.add_typer(keys.app, name="keys")
app.add_typer(cache.app, name="cache")
app.command("serve")(serve.serve)
app.command("doctor")(doctor.doctor)
app.command("setup-guest")(guest.setup_guest)
app.command("setup-base")(base.setup_base)


def main() -> None:
    app()
