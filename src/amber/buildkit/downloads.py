"""``ADD <url>`` inside the isolated network: fetch every download first, then let dockerd fetch it from us.

BuildKit's HTTP source runs inside dockerd, on the host's network, where it could reach the host's loopback,
the Amber API or a loopback registry. So Amber fetches every download of a build itself (``fetch_all``), each
in a confined child process (``amber.buildkit.fetch_worker`` through ``amber.isolation.confine``: only the
outside world), and serves the files for this build only from a loopback server (``DownloadServer``,
unguessable paths). ``rewrite`` replaces each URL source of the Dockerfile by the loopback URL of its file,
on the same line (line numbers never move), keeping the file name BuildKit derives from the URL path and the
``Last-Modified`` date; ADD's semantics (mode 0600, no unpacking, cache keyed by content) are BuildKit's own.
``restore`` maps the loopback URLs in log lines back to what the Dockerfile wrote.

Limits: one download at most ``max_bytes`` (``AMBER_MAX_BLOB_BYTES``) and ``timeout`` seconds; redirects are
followed (10 at most), each hop confined.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import secrets
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from amber.contract.dockerfile import Download
from amber.contract.failures import BuildFailed, FailurePhase
from amber.isolation import IsolationError, confine

WORKER_CWD = "/"


@dataclass(frozen=True)
class Fetched:
    """One downloaded file: where it is, and what dockerd must see of it."""

    url: str  # as resolved from the Dockerfile
    path: Path
    name: str  # the file name BuildKit gives an ADD of ``url`` (the URL path's last part, else ``__unnamed__``)
    last_modified: str | None
    size: int


def buildkit_file_name(url: str) -> str:
    """The name BuildKit's Dockerfile frontend gives the file of ``ADD <url>`` (``path.Base`` of the URL's
    path; ``__unnamed__`` when that is empty, ``.`` or ``/``)."""
    stripped = urllib.parse.unquote(urllib.parse.urlsplit(url).path).rstrip("/")
    base = posixpath.basename(stripped) if stripped else ""
    return base if base not in ("", ".") else "__unnamed__"


async def fetch_all(
    downloads: Sequence[Download], directory: Path, *, max_bytes: int, timeout: float
) -> dict[str, Fetched]:
    """Every distinct URL of ``downloads``, fetched one after the other into ``directory``. Raises
    ``BuildFailed`` (phase ``build_step``) naming the Dockerfile line of a download that failed."""
    directory.mkdir(parents=True, exist_ok=True)
    fetched: dict[str, Fetched] = {}
    for download in downloads:
        for url in download.urls:
            if url in fetched:
                continue
            out = directory / f"{len(fetched):03d}"
            fetched[url] = await asyncio.to_thread(_fetch_one, url, out, download.line, max_bytes, timeout)
    return fetched


def _fetch_one(url: str, out: Path, line: int, max_bytes: int, timeout: float) -> Fetched:
    argv = [sys.executable, "-I", "-m", "amber.buildkit.fetch_worker", url, str(out), str(max_bytes), str(timeout)]
    try:
        command = confine(argv, internet=True)
    except IsolationError as error:
        raise BuildFailed(f"Dockerfile line {line}: cannot isolate the download of {url}: {error}",
                          phase=FailurePhase.PREPARE, code="internal_error") from None  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=WORKER_CWD, timeout=timeout + 30,
                              env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise BuildFailed(f"Dockerfile line {line}: ADD {url} did not finish within {timeout:.0f} s",
                          phase=FailurePhase.BUILD_STEP) from None  # fmt: skip
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise BuildFailed(f"Dockerfile line {line}: ADD {url} failed: {reason}", phase=FailurePhase.BUILD_STEP,
                          details={"dockerfile_line": line})  # fmt: skip
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return Fetched(url, out, buildkit_file_name(url), info.get("last_modified"), int(info["size"]))


class DownloadServer:
    """Serves fetched files on 127.0.0.1 for one build: ``GET /<token>/<name>``, nothing else. A context
    manager; ``url_for`` gives the loopback URL that stands for a download."""

    def __init__(self, files: Mapping[str, Fetched]) -> None:
        self._token = secrets.token_urlsafe(24)
        self._by_path = {f"/{self._token}/{i}/{urllib.parse.quote(f.name, safe='')}": f
                         for i, f in enumerate(files.values())}  # fmt: skip
        self._urls = {f.url: path for path, f in self._by_path.items()}
        by_path = self._by_path

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(body=True)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def _answer(self, *, body: bool) -> None:
                found = by_path.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(found.size))
                self.send_header("Content-Type", "application/octet-stream")
                if found.last_modified:
                    self.send_header("Last-Modified", found.last_modified)
                self.end_headers()
                if body:
                    with found.path.open("rb") as handle, contextlib.suppress(OSError):
                        while chunk := handle.read(1 << 20):
                            self.wfile.write(chunk)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="amber-add-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url_for(self, url: str) -> str:
        return f"http://127.0.0.1:{self.port}{self._urls[url]}"

    def __enter__(self) -> DownloadServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def rewrite(text: str, downloads: Sequence[Download], replacement: Mapping[str, str]) -> str:
    """``text`` with every download's URL sources (as written) replaced by ``replacement[resolved URL]``, on
    the instruction's own lines (pure). Raises ``BuildFailed`` when a written source cannot be found there."""
    lines = text.split("\n")
    for download in downloads:
        start, end = download.line - 1, download.end_line
        chunk = "\n".join(lines[start:end])
        cursor = chunk.upper().find("ADD") + 3
        for written, url in zip(download.written, download.urls, strict=True):
            position = chunk.find(written, cursor)
            if cursor < 3 or position < 0:
                raise BuildFailed(f"Dockerfile line {download.line}: cannot locate the ADD source {written!r}",
                                  phase=FailurePhase.PREPARE)  # fmt: skip
            chunk = chunk[:position] + replacement[url] + chunk[position + len(written) :]
            cursor = position + len(replacement[url])
        new = chunk.split("\n")
        if len(new) != end - start:
            raise BuildFailed(f"Dockerfile line {download.line}: rewriting ADD moved lines", phase=FailurePhase.PREPARE)
        lines[start:end] = new
    return "\n".join(lines)


def restorer(server: DownloadServer | None, downloads: Sequence[Download]) -> Iterator[tuple[str, str]]:
    """(loopback URL, source as written) pairs, for mapping log lines back to the Dockerfile's words."""
    if server is None:
        return
    for download in downloads:
        for written, url in zip(download.written, download.urls, strict=True):
            yield server.url_for(url), written
