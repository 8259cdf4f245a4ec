"""Amber's Python child programs never take modules from the caller's cwd or PYTHONPATH (issue 11, item 6):
a ``concurrent.py`` next to where the server was started once broke every Dockerfile build, as root."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from amber.buildkit.build import default_unpacker

HOSTILE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\nraise SystemExit(3)\n"


@pytest.fixture
def hostile_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cwd and PYTHONPATH full of modules that shadow the standard library and Amber itself."""
    trap = tmp_path / "trap"
    trap.mkdir()
    marker = tmp_path / "marker"
    for name in ("concurrent.py", "json.py", "tarfile.py", "amber.py", "httpx.py"):
        (trap / name).write_text(HOSTILE.format(marker=str(marker)))
    monkeypatch.chdir(trap)
    monkeypatch.setenv("PYTHONPATH", str(trap))
    yield marker
    assert not marker.exists(), "a module from the caller's cwd or PYTHONPATH ran"


def test_the_unpacker_program_ignores_the_callers_cwd_and_pythonpath(hostile_cwd: Path, tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    source = tmp_path / "layer.tar"
    source.write_bytes(raw.getvalue())
    with source.open("rb") as stream:
        default_unpacker(stream, tmp_path / "tree")
    assert (tmp_path / "tree" / "hello.txt").read_bytes() == b"hi\n"
    assert os.getcwd().endswith("trap")
