"""The content rules of a request (templates-api.md R1-R3, R29, R30, R39-R42, R52-R59 …) that need no database.

``request_problems(req)`` lists every violation of a parsed request in field order; ``validate_create_request``
parses and raises the first. Rules needing the store (claim tokens, blob existence, template-base lookup, name
ownership) belong to the build service. Messages never echo credential or secret values.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from amber.contract.credentials import BaseImageAuthAwsEcr, BaseImageAuthBasic, BaseImageAuthGcpArtifactRegistry
from amber.contract.dockerfile import analyse_dockerfile, dockerfile_request_problems
from amber.contract.errors import InvalidRef, InvalidReferenceError, InvalidRequest
from amber.contract.images import canonical_host, parse_reference, registry_host
from amber.contract.request import CreateTemplateRequest, parse_create_request
from amber.contract.runtime import CommandReadiness, HttpReadiness, TcpReadiness, TimeoutReadiness
from amber.contract.sources import context_path_problem
from amber.contract.steps import (
    AptInstallStep,
    BunInstallStep,
    CopyItemsStep,
    CopyStep,
    GitCloneStep,
    MakeDirStep,
    MakeSymlinkStep,
    NpmInstallStep,
    PipInstallStep,
    RemoveStep,
    RenameStep,
    RunStep,
    SkipCacheStep,
    Step,
    UserStep,
    WorkdirStep,
)
from amber.contract.template_refs import NAME_RE, TAG_RE, classify_base_ref, parse_ref, try_parse_ref

_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
_BLOB_ID_RE = re.compile(r"[A-Za-z0-9_:.-]{1,200}")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?")
_BAD_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")

MAX_VCPUS = 64
MIN_MEMORY_MIB = 128
MAX_MEMORY_MIB = 65536
MAX_DISK_MB = 1024 * 1024
MAX_READINESS_TIMEOUT_SECS = 3600


def _problems_name(field: str, value: str) -> Iterable[InvalidRequest]:
    if not NAME_RE.fullmatch(value):
        yield InvalidRequest(
            field,
            f"{value!r} is not a valid template name: a single segment of letters, digits, '.', '_' or '-' "
            "(no '/' or ':'), at most 128 characters",
        )
    elif value.startswith("tmpl_") or value.startswith("tb_"):
        yield InvalidRequest(field, f"{value!r} is reserved: names may not start with 'tmpl_' or 'tb_'")


def _problems_text(field: str, value: str, *, what: str, allow_space: bool = True) -> Iterable[InvalidRequest]:
    if not value.strip():
        yield InvalidRequest(field, f"{what} must not be empty")
    elif "\x00" in value:
        yield InvalidRequest(field, f"{what} must not contain NUL bytes")
    elif not allow_space and (any(c.isspace() for c in value) or _BAD_CHARS_RE.search(value)):
        yield InvalidRequest(field, f"{what} {value!r} must not contain whitespace or control characters")


def _problems_user(field: str, value: str) -> Iterable[InvalidRequest]:
    yield from _problems_text(field, value, what="user", allow_space=False)
    if value.strip() and (value.startswith("-") or value.count(":") > 1 or value.startswith(":")):
        yield InvalidRequest(field, f"{value!r} is not a user spec (user, uid, user:group or uid:gid)")


def _problems_env(field: str, envs: dict[str, str]) -> Iterable[InvalidRequest]:
    for key, value in envs.items():
        if not _ENV_KEY_RE.fullmatch(key):
            yield InvalidRequest(f"{field}.{key}", "is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        elif "\x00" in value:
            yield InvalidRequest(f"{field}.{key}", "value must not contain NUL bytes")


def _problems_context_path(field: str, path: str) -> Iterable[InvalidRequest]:
    problem = context_path_problem(path)
    if problem is not None:
        yield InvalidRequest(field, problem)


def _problems_packages(field: str, packages: list[str]) -> Iterable[InvalidRequest]:
    if not packages:
        yield InvalidRequest(field, "must list at least one package")
    for i, pkg in enumerate(packages):
        if not pkg.strip():
            yield InvalidRequest(f"{field}[{i}]", "package name must not be empty")
        elif pkg.strip() != pkg or _BAD_CHARS_RE.search(pkg):
            yield InvalidRequest(f"{field}[{i}]", f"{pkg!r} must not have surrounding whitespace or control characters")


def _context_paths(req: CreateTemplateRequest) -> set[str]:
    """Every path a COPY may name: listed entries and their implicit parent directories."""
    paths: set[str] = set()
    for entry in req.build_context.files if req.build_context else []:
        parts = entry.path.rstrip("/").split("/")
        for i in range(1, len(parts) + 1):
            paths.add("/".join(parts[:i]))
    return paths


def _problems_copy(
    field: str, sources: list[str], dst: str, user: str | None, known: set[str] | None
) -> Iterable[InvalidRequest]:
    if not sources:
        yield InvalidRequest(f"{field}.sources", "must list at least one source")
    for j, src in enumerate(sources):
        bad = list(_problems_context_path(f"{field}.sources[{j}]", src))
        yield from bad
        if not bad and known is not None and src.rstrip("/") not in known:
            yield InvalidRequest(f"{field}.sources[{j}]", f"{src!r} is not in build_context.files")
    yield from _problems_text(f"{field}.dst", dst, what="destination")
    if user is not None:
        yield from _problems_user(f"{field}.user", user)


_GIT_SCHEMES = ("https", "http", "ssh", "git")
_GIT_HELPER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_SCP_LIKE_RE = re.compile(r"^(?:[^@/]+@)?(?P<host>\[[^]/]+\]|[^:/]+):")


def _loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.", "0", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.endswith(".localhost")


def _problems_git_url(field: str, url: str, *, internet: bool) -> Iterable[InvalidRequest]:
    """``git_clone`` sources: ``https://``, ``http://``, ``ssh://``, ``git://`` (or scp-like ``host:path``) to a
    host other than this server, or a local path / ``file://`` URL (its allowed roots are checked at accept by
    the service). Never a remote helper (``fd::``, ``ext::``…), another scheme or a loopback host; no network
    source without internet access."""
    if _GIT_HELPER_RE.match(url):
        yield InvalidRequest(field, f"{url!r}: git remote helper transports ('{url.split('::', 1)[0]}::') are not "
                                    "allowed; use https://, http://, ssh://, git:// or a local path")
        return
    host: str | None
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme == "file":
            return
        if scheme not in _GIT_SCHEMES:
            yield InvalidRequest(field, f"{url!r}: the {scheme}:// transport is not allowed; use https://, http://, "
                                        "ssh://, git:// or a local path")
            return
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            yield InvalidRequest(field, f"{url!r} is not a valid URL")
            return
    elif (match := _SCP_LIKE_RE.match(url)) is not None and "/" not in url.split(":", 1)[0]:
        host = match.group("host")
    else:
        return  # a local path
    if not host:
        yield InvalidRequest(field, f"{url!r} names no host")
    elif _loopback_host(host):
        yield InvalidRequest(field, f"{url!r} names the build server itself; a repository on the server is cloned by "
                                    "its path, inside a directory of AMBER_GIT_LOCAL_ROOTS")
    elif not internet:
        yield InvalidRequest(field, f"{url!r} needs network access, but build_config.internet_access is false "
                                    "(only a local path can be cloned without it)")


def _problems_step(i: int, step: Step, known: set[str] | None, *, internet: bool = True) -> Iterable[InvalidRequest]:
    f = f"steps[{i}]"
    match step:
        case AptInstallStep() | PipInstallStep() | NpmInstallStep() | BunInstallStep():
            yield from _problems_packages(f"{f}.packages", step.packages)
        case RunStep():
            yield from _problems_text(f"{f}.command", step.command, what="command")
            if step.user is not None:
                yield from _problems_user(f"{f}.user", step.user)
        case WorkdirStep():
            yield from _problems_text(f"{f}.path", step.path, what="path")
        case UserStep():
            yield from _problems_user(f"{f}.user", step.user)
        case CopyStep():
            yield from _problems_copy(f, step.sources, step.dst, step.user, known)
        case CopyItemsStep():
            if not step.items:
                yield InvalidRequest(f"{f}.items", "must list at least one item")
            for k, item in enumerate(step.items):
                yield from _problems_copy(f"{f}.items[{k}]", item.sources, item.dst, item.user, known)
        case RemoveStep():
            yield from _problems_text(f"{f}.path", step.path, what="path")
        case RenameStep():
            yield from _problems_text(f"{f}.src", step.src, what="source path")
            yield from _problems_text(f"{f}.dst", step.dst, what="destination path")
        case MakeDirStep():
            yield from _problems_text(f"{f}.path", step.path, what="path")
        case MakeSymlinkStep():
            yield from _problems_text(f"{f}.target", step.target, what="link target")
            yield from _problems_text(f"{f}.path", step.path, what="link path")
        case GitCloneStep():
            yield from _problems_text(f"{f}.url", step.url, what="url", allow_space=False)
            if step.url.startswith("-"):
                yield InvalidRequest(f"{f}.url", "must not start with '-'")
            else:
                yield from _problems_git_url(f"{f}.url", step.url, internet=internet)
            if step.path is not None:
                yield from _problems_text(f"{f}.path", step.path, what="path")
            if step.branch is not None:
                yield from _problems_text(f"{f}.branch", step.branch, what="branch", allow_space=False)
            if step.depth is not None and step.depth < 1:
                yield InvalidRequest(f"{f}.depth", "must be at least 1")
        case SkipCacheStep():
            pass


def _problems_readiness(
    field: str, probe: TcpReadiness | TimeoutReadiness | HttpReadiness | CommandReadiness
) -> Iterable[InvalidRequest]:
    if isinstance(probe, TimeoutReadiness):
        if not 0 <= probe.timeout_ms <= MAX_READINESS_TIMEOUT_SECS * 1000:
            yield InvalidRequest(f"{field}.timeout_ms", f"must be between 0 and {MAX_READINESS_TIMEOUT_SECS * 1000}")
        return
    if isinstance(probe, TcpReadiness | HttpReadiness) and not 1 <= probe.port <= 65535:
        yield InvalidRequest(f"{field}.port", "must be a TCP port between 1 and 65535")
    if isinstance(probe, HttpReadiness) and (
        not probe.path.startswith("/") or any(c in probe.path for c in "?# ") or _BAD_CHARS_RE.search(probe.path)
    ):
        yield InvalidRequest(f"{field}.path", f"{probe.path!r} must be an absolute URL path without query or fragment")
    if isinstance(probe, CommandReadiness):
        yield from _problems_text(f"{field}.command", probe.command, what="command")
    if probe.timeout_secs is not None and not 1 <= probe.timeout_secs <= MAX_READINESS_TIMEOUT_SECS:
        yield InvalidRequest(f"{field}.timeout_secs", f"must be between 1 and {MAX_READINESS_TIMEOUT_SECS}")
    if probe.interval_ms is not None and not 1 <= probe.interval_ms <= 600_000:
        yield InvalidRequest(f"{field}.interval_ms", "must be between 1 and 600000")
    if probe.startup_grace_secs is not None and not 0 <= probe.startup_grace_secs <= MAX_READINESS_TIMEOUT_SECS:
        yield InvalidRequest(f"{field}.startup_grace_secs", f"must be between 0 and {MAX_READINESS_TIMEOUT_SECS}")


def _problems_auth(
    field: str, auth: BaseImageAuthBasic | BaseImageAuthAwsEcr | BaseImageAuthGcpArtifactRegistry
) -> Iterable[InvalidRequest]:
    # Messages never echo credential values.
    if isinstance(auth, BaseImageAuthBasic):
        if not auth.username.strip():
            yield InvalidRequest(f"{field}.username", "must not be empty")
        if not auth.password.get_secret_value():
            yield InvalidRequest(f"{field}.password", "must not be empty")
    elif isinstance(auth, BaseImageAuthAwsEcr):
        if not auth.access_key_id.strip():
            yield InvalidRequest(f"{field}.access_key_id", "must not be empty")
        if not auth.secret_access_key.get_secret_value().strip():
            yield InvalidRequest(f"{field}.secret_access_key", "must not be empty")
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", auth.region.strip()):
            yield InvalidRequest(f"{field}.region", f"{auth.region!r} is not an AWS region such as 'us-east-1'")


def _problems_image_ref(field: str, ref: str) -> Iterable[InvalidRequest]:
    """``base_image`` is a template ref (R7) or an OCI image reference (distribution's grammar), whichever its
    shape says (``classify_base_ref``); an ambiguous ``ns/name[:tag]`` may be either."""
    if not ref.strip():
        yield InvalidRequest(field, "must not be empty")
        return
    if any(c.isspace() for c in ref) or _BAD_CHARS_RE.search(ref) or len(ref) > 512:
        yield InvalidRequest(field, f"{ref!r} is not an image or template reference (whitespace or too long)")
        return
    kind = classify_base_ref(ref)
    if kind == "template":
        try:
            parse_ref(ref)
        except InvalidRef as exc:
            yield InvalidRequest(field, f"{exc} (a template ref: tmpl_…, name[:tag], namespace/name[:tag])")
        return
    try:
        parse_reference(ref)
    except InvalidReferenceError as exc:
        if kind == "ambiguous" and try_parse_ref(ref) is not None:
            return  # a template ref whose name the image grammar refuses (upper case): the catalog decides
        yield InvalidRequest(field, f"{exc}: use [registry[:port]/]repository[:tag][@sha256:…] with a lower-case "
                                    "repository, or a template ref")


def request_problems(req: CreateTemplateRequest) -> list[InvalidRequest]:
    """Every content-rule violation of a parsed request, in field order. Empty list = acceptable."""
    out: list[InvalidRequest] = []
    add = out.extend

    # Names and tags (R1-R3).
    if req.name is not None:
        add(_problems_name("name", req.name))
    if req.alias is not None:
        add(_problems_name("alias", req.alias))
    if req.tags is not None:
        if not req.tags:
            out.append(InvalidRequest("tags", "must not be empty; omit it to get the 'default' tag"))
        for i, tag in enumerate(req.tags):
            if not TAG_RE.fullmatch(tag):
                out.append(
                    InvalidRequest(
                        f"tags[{i}]",
                        f"{tag!r} is not a valid tag: letters, digits, '.', '_', '-', at most 128 characters",
                    )
                )
            elif tag.startswith("tb_"):
                out.append(InvalidRequest(f"tags[{i}]", f"{tag!r} is reserved: 'tb_' tags name exact builds"))

    # Exactly one source.
    has_dockerfile = req.dockerfile is not None
    has_base = req.base_image is not None
    if has_dockerfile and has_base:
        out.append(InvalidRequest("base_image", "give either dockerfile or base_image, not both"))
    elif not has_dockerfile and not has_base:
        out.append(
            InvalidRequest("base_image", "a source is required: set base_image (with optional steps) or dockerfile")
        )
    if req.dockerfile is not None and not req.dockerfile.strip():
        out.append(InvalidRequest("dockerfile", "must not be empty"))
    if req.base_image is not None:
        add(_problems_image_ref("base_image", req.base_image))
    if has_dockerfile and req.steps:
        out.append(
            InvalidRequest("steps", "declarative steps need base_image; they cannot be combined with dockerfile")
        )

    # Backend rules (R29, R30, R42).
    backend = req.effective_backend
    if has_dockerfile and req.build_backend == "native":
        out.append(InvalidRequest("build_backend", "'native' cannot build a dockerfile; use 'buildkit' or omit it"))
    if backend == "native":
        for field in ("dockerfile_path", "build_args", "build_target"):
            if getattr(req, field) is not None:
                out.append(InvalidRequest(field, "applies only to BuildKit Dockerfile builds"))
        if req.build_secrets:
            out.append(
                InvalidRequest(
                    "build_secrets",
                    "native builds do not support build secrets; use a dockerfile with the buildkit backend",
                )
            )
    if req.dockerfile_path is not None:
        add(_problems_context_path("dockerfile_path", req.dockerfile_path))
    if req.build_target is not None:
        add(_problems_text("build_target", req.build_target, what="build target", allow_space=False))
    if req.build_args:
        for key in req.build_args:
            if not _ENV_KEY_RE.fullmatch(key):
                out.append(InvalidRequest(f"build_args.{key}", "is not a valid build argument name"))

    # Steps.
    known = _context_paths(req) if backend == "native" else None
    internet = not (req.build_config is not None and req.build_config.internet_access is False)
    for i, step in enumerate(req.step_list):
        add(_problems_step(i, step, known, internet=internet))

    # Environment.
    if req.build_envs:
        add(_problems_env("build_envs", req.build_envs))
    if req.start_cmd is not None:
        add(_problems_text("start_cmd", req.start_cmd, what="start command"))

    # Build context (R52, C9).
    if req.build_context is not None:
        seen: set[str] = set()
        for i, entry in enumerate(req.build_context.files):
            f = f"build_context.files[{i}]"
            add(_problems_context_path(f"{f}.path", entry.path))
            norm = entry.path.rstrip("/")
            if norm in seen:
                out.append(InvalidRequest(f"{f}.path", f"{entry.path!r} is listed twice"))
            seen.add(norm)
            if entry.mode is not None and not re.fullmatch(r"[0-7]{1,4}", entry.mode):
                out.append(InvalidRequest(f"{f}.mode", f'{entry.mode!r} is not an octal mode such as "0644"'))
            if entry.entry_type == "dir":
                if entry.content_base64 is not None or entry.blob_id is not None:
                    out.append(InvalidRequest(f, "a 'dir' entry carries neither content_base64 nor blob_id"))
                continue
            if (entry.content_base64 is None) == (entry.blob_id is None):
                out.append(
                    InvalidRequest(
                        f,
                        "a 'file' entry needs exactly one of content_base64 or blob_id "
                        "(run the blob preflight and upload first)",
                    )
                )
            if entry.content_base64 is not None:
                try:
                    base64.b64decode(entry.content_base64, validate=True)
                except (binascii.Error, ValueError):
                    out.append(InvalidRequest(f"{f}.content_base64", "is not valid standard base64"))
            if entry.blob_id is not None and not _BLOB_ID_RE.fullmatch(entry.blob_id):
                out.append(InvalidRequest(f"{f}.blob_id", f"{entry.blob_id!r} is not a blob id"))

    # Build VM (R59).
    cfg = req.build_config
    if cfg is not None:
        if cfg.vcpus is not None and not 1 <= cfg.vcpus <= MAX_VCPUS:
            out.append(InvalidRequest("build_config.vcpus", f"must be between 1 and {MAX_VCPUS}"))
        if cfg.memory_mib is not None and not MIN_MEMORY_MIB <= cfg.memory_mib <= MAX_MEMORY_MIB:
            out.append(
                InvalidRequest("build_config.memory_mib", f"must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}")
            )
        if cfg.disk_mb is not None and not 1 <= cfg.disk_mb <= MAX_DISK_MB:
            out.append(InvalidRequest("build_config.disk_mb", f"must be between 1 and {MAX_DISK_MB}"))

    # Runtime (R53-R58).
    rc = req.runtime_config
    if rc is not None:
        if rc.default_user is not None:
            add(_problems_user("runtime_config.default_user", rc.default_user))
        if rc.default_workdir is not None:
            add(_problems_text("runtime_config.default_workdir", rc.default_workdir, what="workdir"))
            if rc.default_workdir.strip() and not rc.default_workdir.startswith("/"):
                out.append(InvalidRequest("runtime_config.default_workdir", "must be an absolute path"))
        if rc.default_envs:
            add(_problems_env("runtime_config.default_envs", rc.default_envs))
        if rc.readiness is not None:
            add(_problems_readiness("runtime_config.readiness", rc.readiness))

    # Credentials (R39-R42).
    if req.base_image_auth is not None:
        if req.base_image is None and req.dockerfile is None:  # engineer D: the SDK sends it with Dockerfiles too
            out.append(InvalidRequest("base_image_auth", "needs base_image or dockerfile"))
        add(_problems_auth("base_image_auth", req.base_image_auth))
    # Dockerfile rules shared with the build (amber.contract.dockerfile): parse, FROM, target,
    # and the base_image_auth rejections (variable FROM, alias-based imported stages, several registries).
    dockerfile_hosts: list[str] = []
    if req.dockerfile is not None and req.dockerfile.strip():
        for problem in dockerfile_request_problems(
            req.dockerfile,
            build_args=req.build_args,
            build_target=req.build_target,
            has_base_image_auth=req.base_image_auth is not None and req.base_image is None,
            internet_access=not (req.build_config is not None and req.build_config.internet_access is False),
        ):
            out.append(InvalidRequest(problem.field, problem.message))
        dockerfile_hosts = analyse_dockerfile(req.dockerfile, req.build_args).hosts  # FROM and --from, ARGs expanded
    if req.registry_auth is not None:
        hosts: set[str] = set()
        if req.base_image is not None:
            hosts.add(registry_host(req.base_image))
        if req.dockerfile is not None:
            hosts.update(dockerfile_hosts)
        seen_hosts: set[str] = set()
        for i, reg in enumerate(req.registry_auth):
            f = f"registry_auth[{i}]"
            host = reg.registry.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
            if not _HOST_RE.fullmatch(host):
                out.append(InvalidRequest(f"{f}.registry", f"{reg.registry!r} is not a registry host"))
                continue
            canon = canonical_host(host)
            if canon in seen_hosts:
                out.append(InvalidRequest(f"{f}.registry", f"{reg.registry!r} is listed twice"))
            seen_hosts.add(canon)
            if canon not in hosts:
                out.append(
                    InvalidRequest(
                        f"{f}.registry",
                        f"{reg.registry!r} is not a registry this build pulls from (base image or Dockerfile FROM)",
                    )
                )
            add(_problems_auth(f"{f}.auth", reg.auth))
    if req.build_secrets:
        ids: set[str] = set()
        for i, secret in enumerate(req.build_secrets):
            if not _SECRET_ID_RE.fullmatch(secret.id):
                out.append(
                    InvalidRequest(
                        f"build_secrets[{i}].id", f"{secret.id!r} may only use letters, digits, '.', '_' and '-'"
                    )
                )
            elif secret.id in ids:
                out.append(InvalidRequest(f"build_secrets[{i}].id", f"{secret.id!r} is listed twice"))
            ids.add(secret.id)
    if req.claim_token is not None and not req.claim_token.strip():
        out.append(InvalidRequest("claim_token", "must not be empty"))
    return out


def validate_create_request(data: Any) -> CreateTemplateRequest:
    """Parse and check a request (decoded JSON or an already parsed model). Raises the first ``InvalidRequest``."""
    req = data if isinstance(data, CreateTemplateRequest) else parse_create_request(data)
    problems = request_problems(req)
    if problems:
        raise problems[0]
    return req


def request_from_definition(
    definition: dict[str, Any],
    *,
    base_image_auth: Any = None,
    registry_auth: Any = None,
    build_secrets: Any = None,
) -> CreateTemplateRequest:
    """Rebuild a request from a ``persistable_request`` definition (R24, R41): the stored credential/secret
    stubs are dropped and replaced by the fresh values given here (decoded JSON or models), then every rule is
    checked again. Raises ``InvalidRequest``."""
    data = {k: v for k, v in definition.items() if k not in ("base_image_auth", "registry_auth", "build_secrets")}
    for key, value in (("base_image_auth", base_image_auth), ("registry_auth", registry_auth),
                       ("build_secrets", build_secrets)):  # fmt: skip
        if value is None:
            continue
        if isinstance(value, BaseModel):
            data[key] = _revealed(value)
        elif isinstance(value, list):
            data[key] = [_revealed(v) if isinstance(v, BaseModel) else v for v in value]
        else:
            data[key] = value
    return validate_create_request(data)


def _revealed(model: BaseModel) -> dict[str, Any]:
    """A model as plain JSON with secret values in clear (memory only, for re-validation)."""
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, BaseModel):
            value = _revealed(value)
        out[name] = value
    out.update(model.model_extra or {})
    return out
