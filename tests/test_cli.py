import subprocess
import sys


def test_cli_lists_command_groups() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "amber.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("serve", "doctor", "image", "vm", "keys"):
        assert command in out
