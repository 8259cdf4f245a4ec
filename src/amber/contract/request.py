"""CreateTemplateRequest (templates-models.md § 3.1), its parsing, and the form in which it may be stored.

* ``parse_create_request(data)`` turns decoded JSON into a typed ``CreateTemplateRequest``. Types are strict
  (``"2"`` is not an integer, ``true`` is not an integer), open models keep unknown keys, closed models (the 15
  steps, ``TemplateCopyItem``, ``TemplateRegistryAuth``, ``TemplateBuildSecret``) drop them as the SDK does.
  ``structural_problems(data)`` lists every structural error instead of the first.
* ``persistable_request(req)`` is the sanitised definition that may be stored (no credential or secret value);
  ``request_from_definition`` is the one way back from it to a request, with fresh credentials.

The content rules (templates-api.md R1-R59) are in ``validation.py``. Every failure is an ``InvalidRequest``
naming the field (``steps[2].command``) and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, ValidationError

from amber.contract._models import OpenModel, declared_json
from amber.contract.credentials import BaseImageAuth, BuildSecret, RegistryAuth
from amber.contract.errors import InvalidRequest
from amber.contract.runtime import RuntimeConfig
from amber.contract.sources import BuildContext
from amber.contract.steps import STEP_ACTIONS, Step

# ---------------------------------------------------------------------------------------------------------------
# § 3.5 build config (open): the build VM

DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MIB = 512


class BuildConfig(OpenModel):
    vcpus: int | None = None
    memory_mib: int | None = None
    internet_access: bool | None = None
    disk_mb: int | None = None


# ---------------------------------------------------------------------------------------------------------------
# § 3.1 the request


class CreateTemplateRequest(OpenModel):
    """Body of POST /v1/templates, /build, /builds, /plan and /validate. Every field is optional."""

    name: str | None = None
    dockerfile: str | None = None
    base_image: str | None = None
    alias: str | None = None
    tags: list[str] | None = None
    steps: list[Step] | None = None
    build_envs: dict[str, str] | None = Field(default=None, repr=False)
    start_cmd: str | None = None
    build_context: BuildContext | None = None
    build_config: BuildConfig | None = None
    build_backend: Literal["buildkit", "native"] | None = None
    dockerfile_path: str | None = None
    build_args: dict[str, str] | None = None
    build_target: str | None = None
    runtime_config: RuntimeConfig | None = None
    base_image_auth: BaseImageAuth | None = None
    registry_auth: list[RegistryAuth] | None = None
    build_secrets: list[BuildSecret] | None = None
    skip_cache: bool | None = None
    claim_token: str | None = None

    @property
    def effective_tags(self) -> list[str]:
        """Tags the artifact receives: absent → ``["default"]`` (R3); duplicates collapse, order kept."""
        if self.tags is None:
            return ["default"]
        return list(dict.fromkeys(self.tags))

    @property
    def effective_backend(self) -> Literal["buildkit", "native"]:
        """R29: Dockerfile input defaults to ``buildkit``; everything else to ``native``."""
        if self.build_backend is not None:
            return self.build_backend
        return "buildkit" if self.dockerfile is not None else "native"

    @property
    def step_list(self) -> list[Step]:
        return list(self.steps or [])


# ---------------------------------------------------------------------------------------------------------------
# Parsing

_UNION_FIELDS = {"readiness", "base_image_auth", "auth"}
_TAGS = set(STEP_ACTIONS) | {"tcp", "timeout", "http", "command", "basic", "aws_ecr", "gcp_artifact_registry"}


def _field_path(loc: Sequence[int | str]) -> str:
    """``('steps', 0, 'run', 'command')`` → ``steps[0].command`` (drops pydantic's discriminator segment)."""
    out = ""
    prev: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif item in _TAGS and (isinstance(prev, int) or prev in _UNION_FIELDS):
            pass
        else:
            out += f".{item}" if out else item
        prev = item
    return out


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return f"unknown {ctx.get('discriminator', 'kind').strip(chr(39))} {ctx.get('tag')!r}; expected one of " + str(
            ctx.get("expected_tags", "")
        )
    if kind == "union_tag_not_found":
        ctx = error.get("ctx", {})
        return f"is missing its {ctx.get('discriminator', 'kind').strip(chr(39))!r} discriminator"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def parse_create_request(data: Any) -> CreateTemplateRequest:
    """Decoded JSON → ``CreateTemplateRequest``. Raises ``InvalidRequest`` for the first structural error."""
    if not isinstance(data, dict):
        raise InvalidRequest("", "request body must be a JSON object")
    try:
        return CreateTemplateRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise InvalidRequest(_field_path(first["loc"]) or "body", _message(first)) from None


def structural_problems(data: Any) -> list[InvalidRequest]:
    """Every structural error of ``data`` (for the validate endpoint, which reports them all)."""
    if not isinstance(data, dict):
        return [InvalidRequest("", "request body must be a JSON object")]
    try:
        CreateTemplateRequest.model_validate(data)
    except ValidationError as exc:
        return [InvalidRequest(_field_path(e["loc"]) or "body", _message(e)) for e in exc.errors(include_url=False)]
    return []


# ---------------------------------------------------------------------------------------------------------------
# Persistence


def persistable_request(req: CreateTemplateRequest, *, keep_inline_content: bool = False) -> dict[str, Any]:
    """The request as JSON that may be stored (R24, R39, R43): credential values, secret values, ``build_envs``
    values (build-only, R56), unknown keys (a client's additions to open models, ignored by the contract) and
    (unless asked) inline context bytes removed. ``base_image_auth`` keeps only its ``kind``; secrets keep ``id``
    and ``source``; ``registry_auth`` keeps ``registry`` and the auth ``kind``; ``build_envs`` keeps its names
    (each value "")."""
    data = declared_json(req)
    if req.build_envs:
        data["build_envs"] = dict.fromkeys(req.build_envs, "")
    if req.base_image_auth is not None:
        data["base_image_auth"] = {"kind": req.base_image_auth.kind}
    if req.registry_auth is not None:
        data["registry_auth"] = [{"registry": r.registry, "auth": {"kind": r.auth.kind}} for r in req.registry_auth]
    if req.build_secrets is not None:
        data["build_secrets"] = [{"id": s.id, **({"source": s.source} if s.source else {})} for s in req.build_secrets]
    if not keep_inline_content and "build_context" in data:
        for entry in data["build_context"]["files"]:
            entry.pop("content_base64", None)
    return data
