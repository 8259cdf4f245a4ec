"""The one entry point: a Dockerfile request → BuildKit (in Amber's dockerd) → a rootfs tree + image config.

``build_dockerfile_rootfs`` guarantees, per build:
- every image the Dockerfile imports is checked with the caller's own credentials first (``access.py``);
- secrets and registry credentials reach dockerd only over this build's session, from memory; they are
  redacted from every log line and error message;
- a build with secrets (or ``skip_cache``) runs with ``nocache`` and a per-build nonce ARG in every stage,
  so it neither reuses BuildKit's cache nor leaves entries another build could ever match;
- ``internet_access=False`` → network mode ``none``; else ``default``: the daemon's isolated bridge, from which
  ``RUN`` reaches the outside world only (never the host, its loopback, the Amber API or another container);
- ``ADD <url>``: refused without internet (request rules); with internet fetched first inside the isolated
  network and served to dockerd from a loopback server for this build only (``downloads.py``);
- the target stage is solved as an image first (tagged for this build only, untagged at the end): its ID names the tree
  (the config digest covers every layer's diff_id) and its config is the template's image config; then, unless
  the caller has that tree already (``want_tree``), the same solve again (from this build's cache) streams the
  filesystem as a tar over the session straight into the safe unpacker;
- ``cancel`` set → the build is cancelled in dockerd and ``asyncio.CancelledError`` raised.
User-facing failures raise ``BuildFailed`` (phase ``auth``, ``prepare`` or ``build_step``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import secrets as secrets_module
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from amber.buildkit.access import ImageAccessDenied, verify_pull_access
from amber.buildkit.context import ContextFileLike, context_entries, write_context_tar
from amber.buildkit.daemon import DockerdError, ManagedDockerd
from amber.buildkit.downloads import DownloadServer, fetch_all, restorer, rewrite
from amber.buildkit.progress import FailedInstruction, ProgressTranslator, decode_trace, rerun_instructions
from amber.buildkit.session import BuildSession, RegistryCredential, SessionError, credential_host_key
from amber.contract.dockerfile import (
    DockerfileAnalysis,
    DockerfileProblem,
    DockerfileRequestError,
    base_image_auth_host,
    check_dockerfile_request,
)
from amber.contract.failures import BuildFailed, FailurePhase, hide_server_paths
from amber.contract.logs import CacheKind, CacheReason, CacheStatus, Emit, LogEvent, LogKind, LogLevel, LogPhase
from amber.oci.config import ImageConfig
from amber.settings import get_settings

NONCE_ARG = "AMBER_SECRET_BUILD_NONCE"
_CHUNK = 1 << 20
_TAR_DRAIN_TIMEOUT_S = 30.0
_TAIL_CHARS = 2000
DOWNLOAD_TIMEOUT_S = 600.0  # one ADD <url> download, redirects included

TreeUnpacker = Callable[[BinaryIO, Path], None]
TreeWanted = Callable[[str, ImageConfig], Awaitable[bool]]  # (image ID, config) -> export the tree?
AccessCheck = Callable[[str, RegistryCredential | None], Awaitable[None]]


@dataclass(frozen=True)
class DockerfileBuildRequest:
    """The Dockerfile-related fields of a CreateTemplateRequest (validated), plus uploaded blob files."""

    dockerfile: str | None
    dockerfile_path: str | None = None
    context_files: Sequence[ContextFileLike] = ()
    blob_paths: Mapping[str, Path] = field(default_factory=dict)
    build_args: Mapping[str, str] = field(default_factory=dict)
    build_target: str | None = None
    internet_access: bool = True
    skip_cache: bool = False
    build_envs: Mapping[str, str] = field(default_factory=dict)  # env of every RUN, never in the image (R56)


@dataclass(frozen=True)
class DockerfileBuildResult:
    tree: Path | None  # None when ``want_tree`` declined the export
    image_id: str  # the built image's config digest (covers every layer's diff_id): equal ID, equal tree
    tree_is_image: bool  # the exported tree comes from exactly that solve (its export re-ran no instruction)
    image_config: ImageConfig
    dockerfile_digest: str  # sha256 of the Dockerfile as given (before any nonce)
    context_digest: str  # sha256 of the context tar sent to BuildKit
    cache_hits: int
    cache_misses: int
    used_cache: bool  # False when the build bypassed BuildKit's cache (secrets or skip_cache)


class UnpackRefused(Exception):
    """The rootfs unpacker refused the built tree (its message names the entry)."""


def default_unpacker(stream: BinaryIO, target: Path) -> None:
    """The safe rootfs unpacker (path checks, links, set-id bits, xattrs; devices/FIFOs/sockets refused), run as
    its own program (``python -I -m amber.rootfs.unpack_worker``, cwd ``/``: a process boundary, so this package
    imports nothing of ``amber.rootfs``, and no module comes from the caller's cwd or PYTHONPATH) reading
    ``stream`` directly, so it does not compete for the GIL with the threads receiving the stream."""
    process = subprocess.Popen(
        # -I: no module path from the caller's cwd, PYTHONPATH or user site; cwd "/" for the same reason.
        [sys.executable, "-I", "-m", "amber.rootfs.unpack_worker", str(target)],
        cwd="/",
        stdin=stream,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, stderr = process.communicate()
    if process.returncode != 0:
        message = stderr.decode(errors="replace").strip().splitlines()
        raise UnpackRefused(message[-1] if message else f"unpacker exited with status {process.returncode}")


class _Redactor:
    """Replaces every secret and password value in a text by ``***`` (longest first), each ``shown`` pair's
    first text by its second (the loopback URLs of downloads by the Dockerfile's own words), and the server's
    paths (dockerd's roots, this build's staging and target directories) as ``hide_server_paths`` does."""

    def __init__(self, values: Sequence[str], server_roots: Sequence[Path] = (),
                 shown: Sequence[tuple[str, str]] = ()) -> None:  # fmt: skip
        self._values = sorted({v for v in values if len(v) >= 3}, key=len, reverse=True)
        self._roots = [str(root) for root in server_roots]
        self._shown = list(shown)

    def showing(self, pairs: Sequence[tuple[str, str]]) -> _Redactor:
        redactor = _Redactor([], shown=[*self._shown, *pairs])
        redactor._values, redactor._roots = self._values, self._roots
        return redactor

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, "***")
        for internal, shown in self._shown:
            text = text.replace(internal, shown)
        return hide_server_paths(text, self._roots)


def inject_args(dockerfile: str, analysis: DockerfileAnalysis, names: Sequence[str]) -> str:
    """Add ``ARG <name>`` right after every FROM: declared ARGs are in the environment of every RUN of the stage
    (and so in its cache key) but never in the image config."""
    if not names:
        return dockerfile
    lines = dockerfile.split("\n")
    for stage in sorted(analysis.stages, key=lambda s: s.line, reverse=True):
        end = _from_end_line(lines, stage.line)
        for name in reversed(names):
            lines.insert(end, f"ARG {name}")
    return "\n".join(lines)


def inject_nonce(dockerfile: str, analysis: DockerfileAnalysis) -> str:
    """``ARG <NONCE_ARG>`` after every FROM, so every RUN of every stage gets a per-build cache key."""
    return inject_args(dockerfile, analysis, [NONCE_ARG])


def _from_end_line(lines: list[str], start_line: int) -> int:
    """1-based line where the FROM starting at ``start_line`` ends (it may continue with backslashes)."""
    index = start_line - 1
    while index < len(lines) and lines[index].rstrip().endswith("\\"):
        index += 1
    return index + 1


class _TarPipe:
    """The session's DiffCopy writes tar bytes here; the unpacker reads them from the other end."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):  # a 1 MiB pipe decouples the gRPC writer from the unpacker's pace
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        self.reader = os.fdopen(read_fd, "rb")
        self._write_fd: int | None = write_fd
        self._lock = threading.Lock()

    def write(self, chunk: bytes | memoryview) -> None:
        with self._lock:
            if self._write_fd is None:
                raise BrokenPipeError("output closed")
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._write_fd, view) :]

    def close_writer(self) -> None:
        with self._lock:
            if self._write_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._write_fd)
                self._write_fd = None


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            yield chunk


def _build_params(
    *,
    session_id: str,
    build_id: str,
    dockerfile_name: str,
    request: DockerfileBuildRequest,
    build_args: Mapping[str, str],
    nocache: bool,
    tar_output: bool,
) -> dict[str, str]:
    params = {
        "version": "2",  # BuildKit
        "session": session_id,
        "buildid": build_id,
        "dockerfile": dockerfile_name,
        "buildargs": json.dumps(dict(build_args)),
        "networkmode": "default" if request.internet_access else "none",
        "pull": "1",  # re-resolve tags in the registry every build
        "rm": "1",
        "forcerm": "1",
    }
    if request.build_target:
        params["target"] = request.build_target
    if nocache:
        params["nocache"] = "1"
    if tar_output:
        params["outputs"] = json.dumps([{"Type": "tar", "Attrs": {}}])
    return params


def _unpack_failure(error: BaseException, redact: _Redactor) -> BuildFailed:
    return BuildFailed(redact(f"the built filesystem could not be unpacked: {error}"), phase=FailurePhase.BUILD_STEP)


def instruction_failure(failed: FailedInstruction, line: int | None) -> BuildFailed:
    """A failed instruction as the native pipeline reports a failed step: which one (BuildKit's ``[stage k/n]``
    label and the Dockerfile line), how it ended, its last output lines; ``details`` = command, exit_code."""
    code = failed.exit_code
    where = f" (Dockerfile line {line})" if line is not None else ""
    ended = f"exited with code {code}" if code is not None else f"failed: {failed.error}"
    last = "\n".join(failed.tail)[-_TAIL_CHARS:]
    output = f"; last output:\n{last}" if last else " without output"
    details: dict[str, Any] = {"command": failed.instruction}
    if code is not None:
        details["exit_code"] = code
    if line is not None:
        details["dockerfile_line"] = line
    return BuildFailed(f"step {failed.step_index}: {failed.name}{where} {ended}{output}",
                       phase=FailurePhase.BUILD_STEP, step_index=failed.step_index, details=details)  # fmt: skip


class _BuildStream:
    """Reads one /build response stream: progress → LogEvents; error → BuildFailed; image id → ``image_id``."""

    def __init__(
        self,
        translator: ProgressTranslator,
        emit: Emit,
        redact: _Redactor,
        *,
        quiet: bool,
        step_lines: Mapping[int, int] | None = None,
    ) -> None:
        self.translator = translator
        self.emit = emit
        self.redact = redact
        self.quiet = quiet
        self.step_lines = dict(step_lines or {})  # global step → Dockerfile line
        self.image_id: str | None = None
        self.last_step_index: int | None = None
        self.export_started = False

    async def consume(self, response: httpx.Response) -> None:
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            try:
                message: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "error" in message or "errorDetail" in message:
                detail = (message.get("errorDetail") or {}).get("message") or message.get("error") or "build failed"
                for event in self.translator.finish():
                    await self._emit(event)
                failed = self.translator.failed
                if failed is not None:
                    raise instruction_failure(failed, self.step_lines.get(failed.step_index))
                raise BuildFailed(
                    self.redact(f"Dockerfile build failed: {detail}"),
                    phase=FailurePhase.BUILD_STEP,
                    step_index=self.translator.failed_step_index or self.last_step_index,
                )
            if message.get("id") == "moby.buildkit.trace" and "aux" in message:
                update = decode_trace(message["aux"])
                self.export_started |= any(v.name.startswith("exporting to") for v in update.vertexes)
                for event in self.translator.feed(update):
                    await self._emit(event)
            elif message.get("id") == "moby.image.id" and isinstance(message.get("aux"), dict):
                self.image_id = message["aux"].get("ID")
        for event in self.translator.finish():
            await self._emit(event)

    async def _emit(self, event: LogEvent) -> None:
        if event.step_index is not None:
            self.last_step_index = event.step_index
        if self.quiet:
            return
        await self.emit(event)


async def _run_build(
    api: httpx.AsyncClient,
    params: dict[str, str],
    context_tar: Path,
    stream: _BuildStream,
    cancel: asyncio.Event,
) -> None:
    async def run() -> None:
        async with api.stream(
            "POST",
            "/build",
            params=params,
            content=_file_chunks(context_tar),
            headers={"Content-Type": "application/x-tar"},
        ) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                raise BuildFailed(
                    stream.redact(f"dockerd rejected the build: HTTP {response.status_code}: {body.strip()}"),
                    phase=FailurePhase.PREPARE,
                )
            await stream.consume(response)

    if cancel.is_set():
        raise asyncio.CancelledError("build cancelled")
    build_task = asyncio.create_task(run())
    cancel_task = asyncio.create_task(cancel.wait())
    try:
        done, _ = await asyncio.wait({build_task, cancel_task}, return_when=asyncio.FIRST_COMPLETED)
        if build_task in done:
            build_task.result()
            return
        with contextlib.suppress(httpx.HTTPError):
            await api.post("/build/cancel", params={"id": params["buildid"]})
        build_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await build_task
        raise asyncio.CancelledError("build cancelled")
    finally:
        cancel_task.cancel()
        if not build_task.done():
            build_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await build_task


def _credentials_for(
    analysis: DockerfileAnalysis,
    request: DockerfileBuildRequest,
    registry_credentials: Mapping[str, RegistryCredential],
    base_image_credential: RegistryCredential | None,
) -> dict[str, RegistryCredential]:
    credentials = {credential_host_key(host): cred for host, cred in registry_credentials.items()}
    if base_image_credential is not None and request.dockerfile is not None:
        host = base_image_auth_host(request.dockerfile, request.build_args)
        credentials.setdefault(credential_host_key(host), base_image_credential)
    return credentials


async def build_dockerfile_rootfs(
    request: DockerfileBuildRequest,
    *,
    dockerd: ManagedDockerd,
    target_dir: Path,
    staging_dir: Path,
    emit: Emit,
    cancel: asyncio.Event,
    secrets: Mapping[str, str] | None = None,
    registry_credentials: Mapping[str, RegistryCredential] | None = None,
    base_image_credential: RegistryCredential | None = None,
    unpacker: TreeUnpacker | None = None,
    access_check: AccessCheck = verify_pull_access,
    want_tree: TreeWanted | None = None,
) -> DockerfileBuildResult:
    """Build the Dockerfile's target stage into ``target_dir`` (must be empty or absent).

    The target is solved as an image first; ``want_tree(image ID, image config)`` is then asked whether to
    export its tree (None: always); a caller that has the tree for that image ID cached says no and saves the
    export.

    ``staging_dir`` holds the context tar; the caller removes it. ``registry_credentials``
    maps registry host → credential; ``base_image_credential`` is the resolved ``base_image_auth`` and applies
    to the Dockerfile's single registry host.
    """
    secrets = dict(secrets or {})
    registry_credentials = dict(registry_credentials or {})
    unpack = unpacker or default_unpacker
    redact = _Redactor(  # build_envs too: BuildKit shows ARG values in RUN lines, and they are build-only (R56)
        [*secrets.values(), *request.build_envs.values(), *(c.password for c in registry_credentials.values())]
        + ([base_image_credential.password] if base_image_credential else []),
        server_roots=[dockerd.layout.base_dir.resolve(), dockerd.layout.exec_root, staging_dir.resolve(),
                      target_dir.resolve()],
    )
    staging_dir.mkdir(parents=True, exist_ok=True)

    # 1. The request rules (normally already enforced at the API) and the Dockerfile text.
    try:
        entries = context_entries(request.context_files, request.blob_paths)
        dockerfile_text = request.dockerfile
        if dockerfile_text is None:
            wanted = request.dockerfile_path
            found = next((e for e in entries if e.path == wanted and not e.is_dir), None)
            if found is None:
                raise DockerfileRequestError(
                    [DockerfileProblem("dockerfile_path", f"{wanted!r} is not a file in build_context")]
                )
            dockerfile_text = (found.content or b"").decode() if found.source is None else found.source.read_text()
        analysis = check_dockerfile_request(
            dockerfile_text,
            build_args=request.build_args,
            build_target=request.build_target,
            registry_auth_hosts=list(registry_credentials),
            has_base_image_auth=base_image_credential is not None,
            internet_access=request.internet_access,
        )
        credentials = _credentials_for(analysis, request, registry_credentials, base_image_credential)
    except DockerfileRequestError as error:
        raise BuildFailed(redact(f"invalid Dockerfile request: {error}"), phase=FailurePhase.PREPARE) from None
    dockerfile_digest = "sha256:" + hashlib.sha256(dockerfile_text.encode()).hexdigest()

    # 2. Every imported image, checked with this caller's own credentials (BuildKit would not ask again).
    for image in analysis.images:
        try:
            await access_check(image.resolved, credentials.get(credential_host_key(image.host)))
        except ImageAccessDenied as denied:
            raise BuildFailed(redact(str(denied)), phase=FailurePhase.AUTH) from None
        await emit(
            LogEvent(LogKind.MESSAGE, f"pull access to {image.resolved} verified", LogLevel.DEBUG, LogPhase.PREPARING)
        )

    # 3. Cache policy: secrets or skip_cache → no reuse, and keys nobody can ever match again.
    bypass_cache = bool(secrets) or request.skip_cache
    # build_envs reach every RUN as declared ARGs (explicit build_args win on a name clash).
    build_args = {**request.build_envs, **request.build_args}
    injected = list(request.build_envs)
    if bypass_cache:
        build_args[NONCE_ARG] = secrets_module.token_hex(16)
        injected.append(NONCE_ARG)
    # ADD <url>: fetched here inside the isolated network, then served to dockerd from loopback (downloads.py).
    downloads = analysis.downloads
    fetched = {}
    if downloads:
        await emit(LogEvent(LogKind.MESSAGE, f"fetching {len({u for d in downloads for u in d.urls})} ADD "
                            "download(s) inside the isolated network", LogLevel.INFO, LogPhase.PREPARING))  # fmt: skip
        fetched = await fetch_all(downloads, staging_dir / "downloads", max_bytes=get_settings().max_blob_bytes,
                                  timeout=DOWNLOAD_TIMEOUT_S)  # fmt: skip
    server = DownloadServer(fetched) if fetched else None
    written_text = dockerfile_text
    if server is not None:
        written_text = rewrite(dockerfile_text, downloads, {url: server.url_for(url) for url in fetched})
        redact = redact.showing(list(restorer(server, downloads)))
    effective_dockerfile = inject_args(written_text, analysis, injected)
    if bypass_cache:
        await emit(
            LogEvent(
                LogKind.CACHE,
                "BuildKit cache bypassed: " + ("the build uses secrets" if secrets else "skip_cache is set"),
                LogLevel.INFO,
                LogPhase.CACHE,
                cache_kind=CacheKind.LAYER,
                cache_status=CacheStatus.BYPASS,
                cache_reason=CacheReason.WHOLE_BUILD_SKIP_CACHE,
                cache_subject="buildkit",
            )
        )
    try:
        context = write_context_tar(
            staging_dir / "context.tar",
            entries,
            dockerfile=effective_dockerfile if (injected or server or request.dockerfile is not None) else None,
            dockerfile_path=request.dockerfile_path,
        )
    except DockerfileRequestError as error:
        raise BuildFailed(redact(f"invalid build context: {error}"), phase=FailurePhase.PREPARE) from None
    context_digest = "sha256:" + await asyncio.to_thread(_sha256_file, context.path)

    try:
        await dockerd.ensure_running()
    except DockerdError as error:
        raise BuildFailed(redact(f"the BuildKit daemon is unavailable: {error}"), phase=FailurePhase.PREPARE,
                          code="internal_error") from None  # fmt: skip
    pipe = _TarPipe()
    unpack_error: list[BaseException] = []

    def unpack_thread() -> None:
        try:
            with pipe.reader:
                unpack(pipe.reader, target_dir)
        except BaseException as error:  # reported after the build stream ends
            unpack_error.append(error)

    total = analysis.instruction_count(request.build_target)
    translator = ProgressTranslator(
        total_steps=total, step_offsets=analysis.step_offsets(request.build_target), redact=redact
    )
    unpacker_thread = threading.Thread(target=unpack_thread, name="amber-bk-unpack", daemon=True)
    image_id: str | None = None
    image_tag = f"amber-build/{secrets_module.token_hex(8)}:latest"
    exported = tree_is_image = False
    try:
        async with (
            _serving(server),
            BuildSession(
                docker_socket=dockerd.layout.socket,
                secrets=secrets,
                credentials=credentials,
                tar_sink=pipe.write,
            ) as session,
            dockerd.client(timeout=None) as api,
        ):
            # 4. The real build, as an image under a tag of this build's own: its ID (the config digest, which
            # covers every layer's diff_id) names the tree, and its config is the template's image config. The tag
            # (removed at the end) keeps a concurrent build of the same image from deleting it under this one.
            step_lines = analysis.step_lines(request.build_target)
            stream = _BuildStream(translator, emit, redact, quiet=False, step_lines=step_lines)
            params = _build_params(
                session_id=session.session_id,
                build_id=f"amber-{secrets_module.token_hex(8)}",
                dockerfile_name=context.dockerfile_name,
                request=request,
                build_args=build_args,
                nocache=bypass_cache,
                tar_output=False,
            )
            params["t"] = image_tag
            try:
                await _run_build(api, params, context.path, stream, cancel)
            except httpx.HTTPError as error:
                raise BuildFailed(f"lost the connection to dockerd during the build: {type(error).__name__}",
                                  phase=FailurePhase.BUILD_STEP, code="internal_error") from None  # fmt: skip
            image_id = stream.image_id
            if image_id is None:
                raise BuildFailed("BuildKit reported no image for the target stage", phase=FailurePhase.BUILD_STEP)
            inspect = await api.get(f"/images/{image_id}/json")
            inspect.raise_for_status()
            image_config = ImageConfig.from_engine(inspect.json())
            if want_tree is not None and not await want_tree(image_id, image_config):
                await emit(LogEvent(LogKind.MESSAGE, f"image {image_id}: tree export skipped", LogLevel.DEBUG,
                                    LogPhase.PREPARING))  # fmt: skip
            else:
                # 5. Same solve again (served from this build's cache), its filesystem as a tar over the session
                # straight into the unpacker.
                target_dir.mkdir(parents=True, exist_ok=True)
                unpacker_thread.start()
                tar_stream = _BuildStream(ProgressTranslator(redact=redact), emit, redact, quiet=True)
                tar_params = _build_params(
                    session_id=session.session_id,
                    build_id=f"amber-{secrets_module.token_hex(8)}",
                    dockerfile_name=context.dockerfile_name,
                    request=request,
                    build_args=build_args,
                    nocache=False,  # the nonce (if any) keeps this build's keys its own
                    tar_output=True,
                )
                try:
                    await _run_build(api, tar_params, context.path, tar_stream, cancel)
                    await asyncio.to_thread(session.tar_finished.wait, _TAR_DRAIN_TIMEOUT_S)
                except httpx.HTTPError as error:
                    raise BuildFailed(f"lost the connection to dockerd during the export: {type(error).__name__}",
                                      phase=FailurePhase.BUILD_STEP, code="internal_error") from None  # fmt: skip
                except BuildFailed:
                    # An export that failed because the unpacker refused the tree: the unpacker's reason is the
                    # one the user can act on (e.g. a device node the rootfs rules reject), not "aborted".
                    pipe.close_writer()
                    await asyncio.to_thread(unpacker_thread.join, 30)
                    if unpack_error and tar_stream.export_started:
                        raise _unpack_failure(unpack_error[0], redact) from None
                    raise
                pipe.close_writer()
                await asyncio.to_thread(unpacker_thread.join)
                if unpack_error:
                    raise _unpack_failure(unpack_error[0], redact)
                exported = True
                # Nothing ran again but the very image sources the image solve used (same resolved digests):
                # the tree is that image's (a base tag moved in between would show here).
                tree_is_image = not rerun_instructions(translator, tar_stream.translator)
    except SessionError as error:
        raise BuildFailed(redact(str(error)), phase=FailurePhase.PREPARE, code="internal_error") from None
    except httpx.HTTPError as error:
        raise BuildFailed(f"dockerd request failed: {type(error).__name__}: {redact(str(error))}",
                          phase=FailurePhase.FINALIZE, code="internal_error") from None  # fmt: skip
    finally:
        pipe.close_writer()
        if unpacker_thread.is_alive():
            await asyncio.to_thread(unpacker_thread.join, 30)
        if unpacker_thread.ident is None:  # never started: its end of the pipe is still ours
            pipe.reader.close()
        async with dockerd.client() as api:  # untags; the image goes with its last tag
            with contextlib.suppress(httpx.HTTPError):
                await api.delete(f"/images/{image_tag}")
        secrets.clear()
        credentials.clear()
    assert image_id is not None  # else BuildFailed was raised
    return DockerfileBuildResult(
        tree=target_dir if exported else None,
        image_id=image_id,
        tree_is_image=tree_is_image,
        image_config=image_config,
        dockerfile_digest=dockerfile_digest,
        context_digest=context_digest,
        cache_hits=translator.cache_hits,
        cache_misses=translator.cache_misses,
        used_cache=not bypass_cache,
    )


@contextlib.asynccontextmanager
async def _serving(server: DownloadServer | None) -> AsyncIterator[None]:
    if server is None:
        yield
        return
    with server:
        yield


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
