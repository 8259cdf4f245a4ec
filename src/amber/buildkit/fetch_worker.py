"""One download for a Dockerfile ``ADD <url>``, as its own program, run confined by ``amber.buildkit.downloads``.

``python -I -m amber.buildkit.fetch_worker URL OUT MAX_BYTES TIMEOUT_S``: GET ``URL`` (redirects followed, at
most 10), write the body to ``OUT`` (created, mode 0600), print one JSON line ``{"status", "last_modified",
"size"}`` and exit 0; on any failure print the reason on stderr and exit 1. A body over ``MAX_BYTES`` is a
failure. The program imports nothing of Amber: it runs in the isolation group, whose sockets reach only the
outside world (``amber.isolation``), so a URL or redirect naming the host fails at connect.
"""

from __future__ import annotations

import json
import os
import sys

import httpx

_CHUNK = 1 << 20


def fetch(url: str, out: str, max_bytes: int, timeout: float) -> dict[str, object]:
    size = 0
    with httpx.Client(follow_redirects=True, max_redirects=10, timeout=timeout, trust_env=False) as client, \
            client.stream("GET", url, headers={"User-Agent": "amber-add-fetch"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} answered HTTP {response.status_code}")
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            for chunk in response.iter_bytes(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise RuntimeError(f"GET {url}: the body is larger than {max_bytes} bytes")
                handle.write(chunk)
        return {"status": response.status_code, "last_modified": response.headers.get("Last-Modified"),
                "size": size}


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print("usage: fetch_worker URL OUT MAX_BYTES TIMEOUT_S", file=sys.stderr)
        return 2
    url, out, max_bytes, timeout = argv[1], argv[2], int(argv[3]), float(argv[4])
    try:
        print(json.dumps(fetch(url, out, max_bytes, timeout)))
    except (httpx.HTTPError, OSError, RuntimeError) as error:
        reason = str(error) or type(error).__name__
        print(f"{type(error).__name__}: {reason}" if isinstance(error, httpx.HTTPError) else reason,
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
