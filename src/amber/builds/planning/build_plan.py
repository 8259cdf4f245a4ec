"""One build, decided once: a validated request → a frozen ``BuildPlan``. Pure.

``make_plan(request, base_template, blob_digests)`` is called at accept, inside the accepting transaction, with
what only the store knows: the template ``base_image`` resolved to (``BaseTemplate``) and the content digest of
every uploaded blob. The plan is stored with the build (``to_json``/``from_json``, a ``plan`` column); the worker
executes it and ``/plan`` and ``/validate`` render it (``plan.py``), so the three never decide anything twice.

A plan holds: the source kind, backend and base (classified here, once), the step plans, the Dockerfile, every
cache-key input that does not depend on the base disk (copied context entries with content digests, build envs,
cache decisions), what the request says about the runtime (``RuntimeSettings``; the one rule combining it with
the image is ``runtime.runtime_defaults``), the VM shape, the request's digests and the plan's warnings.

It never holds credentials, secret values or inline context bytes (those stay in memory, ``BuildInputs``), nor
anything known only when the build runs: the base image's manifest digest and config, the guest fingerprint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from amber.builds.planning.cache import (
    CacheDecision,
    copied_entries,
    final_artifact_key,
    final_decision,
    layer_decisions,
    step_key,
)
from amber.builds.planning.digests import content_digest, context_manifest, dockerfile_digest, source_digest
from amber.builds.planning.dockerfile_source import final_stage_image
from amber.builds.planning.runtime import (
    ImageDefaults,
    RuntimeDefaults,
    RuntimeSettings,
    inherited_defaults,
    readiness_from_json,
    runtime_defaults,
    runtime_from_json,
)
from amber.builds.planning.source import resolve_source
from amber.builds.planning.steps import (
    CacheBoundaryOp,
    CopyOp,
    GitCloneOp,
    Op,
    ShellOp,
    StepPlan,
    UserOp,
    WorkdirOp,
    env_line,
    plan_steps,
    render_dockerfile,
)
from amber.contract.images import canonical_host, registry_host
from amber.contract.request import DEFAULT_MEMORY_MIB, DEFAULT_VCPUS, CreateTemplateRequest
from amber.contract.sources import Backend, BuildContextFile, SourceType
from amber.contract.steps import AptInstallStep, BunInstallStep, GitCloneStep, NpmInstallStep, PipInstallStep

PLAN_FORMAT = 1  # bump when a stored plan can no longer be read by ``from_json``

BaseKind = Literal["oci", "template", "dockerfile"]


@dataclass(frozen=True)
class BaseTemplate:
    """The template a ``base_image`` names, as the store resolved it at accept (tags may move later)."""

    ref: str  # ``base_image`` as written
    artifact_id: str
    runtime_defaults: Mapping[str, Any] | None = None  # its TemplateRuntimeDefaults JSON (keys only, no env values)


@dataclass(frozen=True)
class VmShape:
    """The build VM, and the template's: resources and network."""

    vcpus: int
    memory_mib: int
    disk_mb: int | None  # root disk size of an OCI import (None: the image's size plus headroom)
    internet_access: bool


@dataclass(frozen=True)
class DockerfileSource:
    """The BuildKit inputs of a ``dockerfile`` source besides the text and the context."""

    dockerfile_path: str | None = None
    build_args: tuple[tuple[str, str], ...] = ()
    build_target: str | None = None


@dataclass(frozen=True)
class ContextFile:
    """One build-context entry without its bytes; ``digest`` is its content identity ("" for a directory)."""

    path: str
    entry_type: Literal["dir", "file"]
    digest: str
    mode: str | None = None
    blob_id: str | None = None  # None: the bytes came inline and live in memory only (``BuildInputs``)

    def as_request_file(self, inline: Mapping[str, str]) -> BuildContextFile:
        """The request's entry again, its inline bytes (``content_base64`` by path) put back."""
        return BuildContextFile(path=self.path, entry_type=self.entry_type, mode=self.mode, blob_id=self.blob_id,
                                content_base64=inline.get(self.path) if self.blob_id is None else None)  # fmt: skip


@dataclass(frozen=True)
class PlanDigests:
    source_digest: str
    dockerfile_digest: str
    context_digest: str | None


@dataclass(frozen=True)
class BuildPlan:
    source_type: SourceType
    backend: Backend
    base_kind: BaseKind
    base_ref: str  # the FROM: ``base_image``, or the last image a Dockerfile imports
    base_template: BaseTemplate | None  # set when the base is a template resolved by the store
    steps: tuple[StepPlan, ...]
    dockerfile: str  # as given, or what the steps render to (the SDK's ``to_dockerfile``)
    dockerfile_source: DockerfileSource | None  # set for ``dockerfile`` sources
    build_envs: tuple[tuple[str, str], ...]  # in request order: steps see them, the runtime never does
    context: tuple[ContextFile, ...]
    skip_cache: bool  # top-level ``skip_cache``: nothing is looked up or stored
    uses_secrets: bool  # ``build_secrets`` given: a Dockerfile build neither reads nor writes Amber's cache
    runtime: RuntimeSettings
    vm: VmShape
    requires_base_image_auth: bool
    digests: PlanDigests
    warnings: tuple[str, ...] = ()
    image: ImageDefaults = field(default_factory=lambda: ImageDefaults(complete=False))  # known before the build

    # -- what follows from the plan (pure) ---------------------------------------------------------------------

    def runtime_defaults(self, image: ImageDefaults | None = None) -> RuntimeDefaults:
        """The template's runtime defaults over ``image`` (the base the build booted; default: what the plan
        knows of it before the build). The executed build and the plan both come through here."""
        return runtime_defaults(self.runtime, self.steps, self.image if image is None else image)

    def cache_decisions(self) -> tuple[CacheDecision, list[CacheDecision], CacheDecision]:
        """(base disk, one per step, final artifact) — the cache rules of ``cache.py``."""
        base, steps = layer_decisions(self.skip_cache, self.steps)
        return base, steps, final_decision(self.skip_cache, steps)

    def step_keys(self, base_key: str) -> list[str]:
        """The chain key of every step over the base disk keyed ``base_key`` (``cache.py``)."""
        build_envs = dict(self.build_envs)
        keys: list[str] = []
        for step in self.steps:
            keys.append(step_key(keys[-1] if keys else base_key, step, self.copied(step), build_envs))
        return keys

    def final_key(self, last_key: str, runtime: RuntimeDefaults, guest_fingerprint: str) -> str:
        """The final artifact's key over the last layer (or the base) keyed ``last_key``."""
        vm = self.vm
        return final_artifact_key(last_key, runtime, vcpus=vm.vcpus, memory_mib=vm.memory_mib, disk_mb=vm.disk_mb,
                                  internet_access=vm.internet_access, guest_fingerprint=guest_fingerprint)  # fmt: skip

    def copied(self, step: StepPlan) -> list[tuple[str, str, str, str]]:
        """The context entries ``step`` copies, with content digests (a step key input)."""
        digests = {f.path: f.digest for f in self.context}
        files = [BuildContextFile(path=f.path, entry_type=f.entry_type, mode=f.mode) for f in self.context]
        return copied_entries(step, files, lambda entry: digests.get(entry.path, ""))

    def context_files(self, inline: Mapping[str, str]) -> list[BuildContextFile]:
        return [f.as_request_file(inline) for f in self.context]

    @property
    def blob_entries(self) -> list[tuple[str, str]]:
        """``(path, blob_id)`` of every uploaded context file."""
        return [(f.path, f.blob_id) for f in self.context if f.blob_id is not None]

    # -- storage -----------------------------------------------------------------------------------------------

    def stored(self) -> BuildPlan:
        """This plan as it may be stored: ``build_envs`` values are build-only (R56) and never persisted, only
        their names (the values travel in the accepting process's memory, ``BuildInputs``); a declarative
        build's rendered Dockerfile, which carries them in ``ENV`` lines, is stored with those lines empty."""
        if not self.build_envs:
            return self
        return self._with_env_values({k: "" for k, _ in self.build_envs})

    def with_build_envs(self, values: Mapping[str, str]) -> BuildPlan:
        """A stored plan with its ``build_envs`` values back (names the plan does not list are ignored)."""
        if not self.build_envs:
            return self
        return self._with_env_values({k: values.get(k, "") for k, _ in self.build_envs})

    def _with_env_values(self, values: Mapping[str, str]) -> BuildPlan:
        text = self.dockerfile
        if self.dockerfile_source is None:  # the rendered declarative Dockerfile: swap its ENV lines
            lines = text.split("\n")
            for key, old in self.build_envs:
                try:
                    lines[lines.index(env_line(key, old))] = env_line(key, values[key])
                except ValueError:
                    continue
            text = "\n".join(lines)
        return replace(self, build_envs=tuple((k, values[k]) for k, _ in self.build_envs), dockerfile=text)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [_step_json(s) for s in self.steps]
        data["format"] = PLAN_FORMAT
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildPlan:
        """A stored plan back. Raises ``ValueError`` for a plan of another format or shape."""
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"build plan format {data.get('format')!r} is not {PLAN_FORMAT}")
        try:
            base, source = data["base_template"], data["dockerfile_source"]
            runtime, image = data["runtime"], data["image"]
            return cls(
                source_type=data["source_type"],
                backend=data["backend"],
                base_kind=data["base_kind"],
                base_ref=data["base_ref"],
                base_template=BaseTemplate(**base) if base is not None else None,
                steps=tuple(_step_from_json(s) for s in data["steps"]),
                dockerfile=data["dockerfile"],
                dockerfile_source=None if source is None else DockerfileSource(
                    source["dockerfile_path"], _pairs(source["build_args"]), source["build_target"]),
                build_envs=_pairs(data["build_envs"]),
                context=tuple(ContextFile(**f) for f in data["context"]),
                skip_cache=bool(data["skip_cache"]),
                uses_secrets=bool(data["uses_secrets"]),
                runtime=RuntimeSettings(**{**runtime, "envs": _pairs(runtime["envs"]),
                                           "readiness": readiness_from_json(runtime["readiness"])}),
                vm=VmShape(**data["vm"]),
                requires_base_image_auth=bool(data["requires_base_image_auth"]),
                digests=PlanDigests(**data["digests"]),
                warnings=tuple(data["warnings"]),
                image=ImageDefaults(**{**image, "env": _pairs(image["env"]),
                                       "readiness": readiness_from_json(image["readiness"])}),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"build plan does not read back: {exc!r}") from None


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in value)


_OPS: dict[str, type[Op]] = {t.__name__: t for t in (ShellOp, CopyOp, WorkdirOp, UserOp, GitCloneOp, CacheBoundaryOp)}


def _step_json(step: StepPlan) -> dict[str, Any]:
    return {"index": step.index, "action": step.action, "lines": list(step.lines),
            "ops": [{"op": type(op).__name__, **asdict(op)} for op in step.ops]}  # fmt: skip


def _step_from_json(data: Mapping[str, Any]) -> StepPlan:
    ops: list[Op] = []
    for item in data["ops"]:
        kind = _OPS[item["op"]]
        values = {f.name: item[f.name] for f in fields(kind)}
        if "sources" in values:
            values["sources"] = tuple(values["sources"])
        ops.append(kind(**values))
    return StepPlan(index=int(data["index"]), action=str(data["action"]), lines=tuple(data["lines"]), ops=tuple(ops))


# -- making a plan ---------------------------------------------------------------------------------------------


def _warnings(req: CreateTemplateRequest, inherited_start: bool) -> list[str]:
    out: list[str] = []
    if req.tags is not None and len(set(req.tags)) != len(req.tags):
        out.append("tags: duplicate tags were collapsed")
    if req.skip_cache:
        out.append("skip_cache: every cache is bypassed for this build")
    if any(s.action == "skip_cache" for s in req.step_list):
        out.append("steps: steps from the first skip_cache step on are rebuilt on every build")
    rc = req.runtime_config
    if rc is not None and rc.readiness is not None and not req.start_cmd and not inherited_start:
        out.append("runtime_config.readiness: set without start_cmd; the probe checks a service nothing starts")
    offline = req.build_config is not None and req.build_config.internet_access is False
    needs_net = (AptInstallStep, PipInstallStep, NpmInstallStep, BunInstallStep, GitCloneStep)
    if offline and any(isinstance(s, needs_net) for s in req.step_list):
        out.append("build_config.internet_access: false, but package installs and git clones usually need it")
    return out


def _requires_base_image_auth(req: CreateTemplateRequest) -> bool:
    if req.base_image_auth is not None:
        return True
    host = registry_host(req.base_image) if req.base_image is not None else None
    return any(canonical_host(r.registry) == host for r in req.registry_auth or [])


def make_plan(
    req: CreateTemplateRequest,
    base_template: BaseTemplate | None = None,
    blob_digests: Mapping[str, str] | None = None,
) -> BuildPlan:
    """The plan of a request already checked by ``validate_create_request``.

    ``base_template``: what the store resolved ``base_image`` to, when it names a template (an ``ns/name`` ref
    that is no template stays an OCI image; without a store, a ``tmpl_…`` ref is a template base whose parent is
    unknown). ``blob_digests``: blob id → ``sha256:…`` of its content, for every uploaded context file.
    """
    source = resolve_source(req, base_is_template=base_template is not None)
    steps = tuple(plan_steps(req.step_list))
    build_envs = tuple((req.build_envs or {}).items())
    files = list(req.build_context.files) if req.build_context is not None else []
    digests = blob_digests or {}
    context = tuple(
        ContextFile(path=f.path, entry_type=f.entry_type, digest=content_digest(f, digests), mode=f.mode,
                    blob_id=f.blob_id)
        for f in files
    )  # fmt: skip
    manifest = context_manifest(files, lambda f: content_digest(f, digests)) if req.build_context is not None else None
    cfg = req.build_config
    dockerfile_source: DockerfileSource | None = None
    if req.dockerfile is not None:
        base_kind: BaseKind = "dockerfile"
        text = req.dockerfile
        image = final_stage_image(text, req.build_target)
        dockerfile_source = DockerfileSource(req.dockerfile_path, tuple((req.build_args or {}).items()),
                                             req.build_target)  # fmt: skip
    else:
        base_kind = "template" if source.base_is_template else "oci"
        text = render_dockerfile(source.base_ref, steps, dict(build_envs), req.start_cmd)
        parent = base_template.runtime_defaults if base_template is not None else None
        image = inherited_defaults(runtime_from_json(parent)) if parent is not None else ImageDefaults(complete=False)
    return BuildPlan(
        source_type=source.source_type,
        backend=source.backend,
        base_kind=base_kind,
        base_ref=source.base_ref,
        base_template=base_template,
        steps=steps,
        dockerfile=text,
        dockerfile_source=dockerfile_source,
        build_envs=build_envs,
        context=context,
        skip_cache=bool(req.skip_cache),
        uses_secrets=bool(req.build_secrets),
        runtime=RuntimeSettings.of(req),
        vm=VmShape(
            vcpus=(cfg.vcpus if cfg and cfg.vcpus else None) or DEFAULT_VCPUS,
            memory_mib=(cfg.memory_mib if cfg and cfg.memory_mib else None) or DEFAULT_MEMORY_MIB,
            disk_mb=cfg.disk_mb if cfg else None,
            internet_access=not (cfg is not None and cfg.internet_access is False),
        ),
        requires_base_image_auth=_requires_base_image_auth(req),
        digests=PlanDigests(
            source_digest=source_digest(req, manifest.digest if manifest else None),
            dockerfile_digest=dockerfile_digest(text),
            context_digest=manifest.digest if manifest else None,
        ),
        warnings=tuple(_warnings(req, image.start_cmd is not None)),
        image=image,
    )

