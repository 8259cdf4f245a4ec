"""``python -m amber.rootfs.unpack_worker TARGET``: unpack the tar on stdin into TARGET (``unpack_tar_stream``).

A program, not a library: ``amber.buildkit`` runs it on BuildKit's tar export. A separate process because the
unpacker is CPU-bound Python: in the build process it would fight the gRPC threads receiving the same stream for
the GIL (measured: ~2x slower than either alone). Exit 0 on success;
exit 2 with the unpacker's message on stderr when the tree is refused (unsafe path, special file, ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

from amber.oci.errors import ImageImportError
from amber.rootfs.unpack import unpack_tar_stream


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m amber.rootfs.unpack_worker TARGET", file=sys.stderr)
        return 64
    try:
        unpack_tar_stream(sys.stdin.buffer, Path(argv[1]), layer="BuildKit output")
    except ImageImportError as error:
        print(str(error), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
