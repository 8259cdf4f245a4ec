"""What a Dockerfile imports, and the request rules that depend on it (pure functions, no I/O).

Parsing uses the ``dockerfile`` package (BuildKit's own Go parser). On top of it this module resolves stage
names, expands the global ``ARG`` values that ``FROM`` may use (build_args over defaults, BuildKit's rules),
and lists every external image a build imports, through ``FROM`` or ``--from=`` (COPY / RUN --mount).

Request rules (each problem names the request field and the reason; see docs/buildkit.md):
- ``dockerfile`` must parse and contain a ``FROM``; a ``FROM`` must not resolve to an empty image name.
- ``build_target`` must name a stage.
- ``registry_auth[i].registry`` must be a host some imported image uses, and appear once.
- ``base_image_auth`` (one credential, no host) needs exactly one external registry host, a literal
  (variable-free) ``FROM``, and no image imported through an alias: a ``--from=`` image reference or a
  ``FROM`` naming a stage alias that is only defined later (BuildKit would pull it as an image).
- An image ``namespace/name`` without a registry host is refused (on this server it names a template; Docker
  Hub images are written ``docker.io/namespace/name``), whether or not that namespace exists here.
- No ``# syntax=`` parser directive and no ``BUILDKIT_SYNTAX`` build arg: a frontend image would be pulled
  from wherever it names and could fetch any URL from the daemon's host (docs/buildkit.md, isolation).
- ``ADD <url>`` (every ``http://``/``https://`` source, after the stage's ARG/ENV expansion) is a download
  (``DockerfileAnalysis.downloads``): refused when ``internet_access`` is false; a source whose variables only
  the base image could define and that could thereby be a URL is refused (Amber must know every download
  before the build, to fetch it inside the isolated network), and so is an ADD mixing URLs and local files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dockerfile as dockerfile_parser

from amber.contract.errors import InvalidReferenceError
from amber.contract.images import canonical_host, explicit_registry, parse_reference, registry_host

# Automatic platform ARGs BuildKit defines in the global scope (this host builds linux/amd64 only).
PLATFORM_ARGS: dict[str, str] = {
    "TARGETPLATFORM": "linux/amd64",
    "TARGETOS": "linux",
    "TARGETARCH": "amd64",
    "TARGETVARIANT": "",
    "BUILDPLATFORM": "linux/amd64",
    "BUILDOS": "linux",
    "BUILDARCH": "amd64",
    "BUILDVARIANT": "",
}
_STEP_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD", "WORKDIR"})  # the rest only change the image config
_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-+])?(?P<word>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


@dataclass(frozen=True)
class DockerfileProblem:
    """One broken request rule: ``field`` is the request field (JSON path), ``message`` the reason."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class DockerfileRequestError(ValueError):
    """Raised by the ``check_*`` helpers; carries every problem found (the first one is the message)."""

    def __init__(self, problems: Sequence[DockerfileProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = list(problems)
        self.field = problems[0].field
        self.reason = problems[0].message


@dataclass(frozen=True)
class ImageUse:
    """One external image a build imports: the reference as written, as resolved, and where."""

    written: str
    resolved: str
    line: int
    via: str  # "FROM" or "--from"
    uses_variable: bool

    @property
    def host(self) -> str:
        return registry_host(self.resolved)


@dataclass(frozen=True)
class Download:
    """One ``ADD`` instruction that downloads: its URL sources as written and as resolved."""

    line: int
    end_line: int
    written: tuple[str, ...]  # the source tokens as the Dockerfile writes them
    urls: tuple[str, ...]  # the same after the stage's ARG/ENV expansion


@dataclass
class Stage:
    index: int
    name: str | None
    base_written: str
    base_resolved: str
    line: int
    base_stage: int | None  # index of the stage this one builds on, when FROM names a stage
    instructions: int = 0  # instructions after FROM that BuildKit runs as a step (RUN, COPY, ADD, WORKDIR)
    stage_refs: set[int] = field(default_factory=set)  # stages read through --from
    instruction_lines: list[int] = field(default_factory=list)  # first line of each of those instructions

    @property
    def step_count(self) -> int:
        """Vertices BuildKit shows for this stage: its RUN/COPY/ADD/WORKDIR, plus FROM when it pulls an image."""
        pulls_image = self.base_stage is None and self.base_resolved.lower() != "scratch"
        return self.instructions + (1 if pulls_image else 0)


@dataclass
class DockerfileAnalysis:
    stages: list[Stage] = field(default_factory=list)
    images: list[ImageUse] = field(default_factory=list)
    forward_alias_lines: list[int] = field(default_factory=list)  # FROM naming a stage defined only later
    problems: list[DockerfileProblem] = field(default_factory=list)
    downloads: list[Download] = field(default_factory=list)  # ADD <url>, file order

    @property
    def hosts(self) -> list[str]:
        """Registry hosts of every imported image, in first-use order."""
        return list(dict.fromkeys(image.host for image in self.images))

    def stage_named(self, name: str) -> Stage | None:
        for stage in self.stages:
            if stage.name is not None and stage.name == name.lower():
                return stage
        return None

    def target_stage(self, target: str | None) -> Stage | None:
        if target is None:
            return self.stages[-1] if self.stages else None
        return self.stage_named(target)

    def needed_stages(self, target: str | None) -> list[Stage]:
        """The stages BuildKit builds for ``target`` (its base chain and every ``--from`` stage), file order."""
        stage = self.target_stage(target)
        if stage is None:
            return []
        needed: set[int] = set()
        pending = [stage.index]
        while pending:
            index = pending.pop()
            if index in needed or index >= len(self.stages):
                continue
            needed.add(index)
            current = self.stages[index]
            if current.base_stage is not None:
                pending.append(current.base_stage)
            pending.extend(current.stage_refs)
        return [self.stages[i] for i in sorted(needed)]

    def instruction_count(self, target: str | None) -> int:
        """Steps BuildKit shows as ``[stage k/n]`` vertices for ``target``."""
        return sum(stage.step_count for stage in self.needed_stages(target))

    def step_offsets(self, target: str | None) -> dict[str, int]:
        """Stage label as BuildKit prints it (alias, else ``stage-N``; ``""`` for a one-stage file) → number of
        steps before that stage, so ``[label k/n]`` is global step ``offset + k``."""
        offsets: dict[str, int] = {}
        total = 0
        for stage in self.needed_stages(target):
            offsets[stage.name or f"stage-{stage.index}"] = total
            total += stage.step_count
        if len(self.stages) == 1:
            offsets[""] = 0
        return offsets

    def step_lines(self, target: str | None) -> dict[int, int]:
        """Global step (as ``step_offsets`` numbers them) → its line in the Dockerfile as given."""
        lines: dict[int, int] = {}
        total = 0
        for stage in self.needed_stages(target):
            own = ([stage.line] if stage.step_count > stage.instructions else []) + stage.instruction_lines
            for position, line in enumerate(own, start=1):
                lines[total + position] = line
            total += stage.step_count
        return lines


def expand_variables(word: str, values: Mapping[str, str]) -> str:
    """Expand ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:+alt}``, ``${VAR+alt}``
    as BuildKit's shell lexer does for FROM; unknown variables expand to ''. Hand-written: the ``dockerfile``
    package parses but does not expand."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        op = match.group("op")
        word_value = match.group("word") or ""
        is_set = name in values
        value = values.get(name, "")
        if op is None:
            return value
        if op == ":-":
            return value if value else word_value
        if op == "-":
            return value if is_set else word_value
        if op == ":+":
            return word_value if value else ""
        return word_value if is_set else ""  # "+"

    return _VARIABLE.sub(replace, word)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _flag_value(flags: Iterable[str], name: str) -> str | None:
    for flag in flags:
        if flag.startswith(f"--{name}="):
            return flag.split("=", 1)[1]
    return None


def _mount_from_values(flags: Iterable[str]) -> list[str]:
    found: list[str] = []
    for flag in flags:
        if not flag.startswith("--mount="):
            continue
        for option in flag[len("--mount=") :].split(","):
            key, _, value = option.partition("=")
            if key.strip().lower() == "from" and value:
                found.append(value.strip())
    return found


_UNKNOWN = "\x00"  # stands for a value only the base image's config could give
_DIRECTIVE = re.compile(r"^\s*#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$")
SYNTAX_BUILD_ARG = "BUILDKIT_SYNTAX"


def parser_directives(text: str) -> list[tuple[int, str, str]]:
    """``(line, key lower-cased, value)`` of the parser directives at the top of a Dockerfile (BuildKit reads
    them until the first line that is not one)."""
    found = []
    for number, line in enumerate(text.split("\n"), start=1):
        match = _DIRECTIVE.match(line)
        if not match:
            break
        found.append((number, match.group(1).lower(), match.group(2)))
    return found


@dataclass
class _Scope:
    """What a stage's ADD sources may expand with: its ARG/ENV values (None = depends on the base image) and
    whether a name it never set could still come from a base image's ENV."""

    values: dict[str, str | None] = field(default_factory=dict)
    open: bool = True  # rooted in an image (not scratch): unknown names may be set by its config

    def expand(self, word: str) -> str:
        values: dict[str, str] = {}
        for match in _VARIABLE.finditer(word):
            name = match.group("braced") or match.group("bare")
            if name in self.values:
                value = self.values[name]
                values[name] = _UNKNOWN if value is None else value
            elif self.open:
                values[name] = _UNKNOWN
        return expand_variables(_unquote(word), values)


def _url_kind(expanded: str) -> str:
    """``"url"``, ``"local"`` or ``"unknown"`` (a variable only the base image defines could make it a URL)."""
    lowered = expanded.lower()
    if _UNKNOWN in lowered:
        prefix = lowered[: lowered.index(_UNKNOWN)]
        could = any(scheme.startswith(prefix) or prefix.startswith(scheme) for scheme in ("http://", "https://"))
        return "unknown" if could else "local"
    return "url" if lowered.startswith(("http://", "https://")) else "local"


def _add_download(command: dockerfile_parser.Command, scope: _Scope, analysis: DockerfileAnalysis) -> None:
    sources = list(command.value)[:-1]
    kinds = [(written, scope.expand(written)) for written in sources]
    line = command.start_line
    urls = [(w, e) for w, e in kinds if _url_kind(e) == "url"]
    for written, expanded in kinds:
        if _url_kind(expanded) == "unknown":
            analysis.problems.append(DockerfileProblem(
                "dockerfile", f"line {line}: ADD source {written!r} uses a variable whose value only the base image "
                "could give, and it could make the source a URL: Amber must know every download before the build "
                "(set the variable with ARG or ENV in the Dockerfile, or write the source literally)"))
    if urls and len(urls) != len(kinds):
        analysis.problems.append(DockerfileProblem(
            "dockerfile", f"line {line}: ADD mixes URLs and local files; put the downloads in an ADD of their own"))
        return
    if urls:
        analysis.downloads.append(Download(line, command.end_line, tuple(w for w, _ in urls),
                                           tuple(e for _, e in urls)))


def analyse_dockerfile(text: str, build_args: Mapping[str, str] | None = None) -> DockerfileAnalysis:
    """Stages, external images and structural problems of a Dockerfile (never raises)."""
    analysis = DockerfileAnalysis()
    build_args = dict(build_args or {})
    try:
        commands = dockerfile_parser.parse_string(text)
    except dockerfile_parser.GoParseError as error:
        analysis.problems.append(DockerfileProblem("dockerfile", f"does not parse: {error}"))
        return analysis
    global_args: dict[str, str] = dict(PLATFORM_ARGS)
    all_names = set()
    for command in commands:
        if command.cmd.upper() == "FROM":
            words = list(command.value)
            if len(words) >= 3 and words[1].upper() == "AS":
                all_names.add(words[2].lower())
    current: Stage | None = None
    scopes: list[_Scope] = []
    scope = _Scope()
    for number, key, _value in parser_directives(text):
        if key == "syntax":
            analysis.problems.append(DockerfileProblem(
                "dockerfile", f"line {number}: the '# syntax=' directive is not supported (BuildKit would pull and "
                "run that frontend image); remove it: the daemon's built-in Dockerfile frontend is used"))
    if SYNTAX_BUILD_ARG in build_args:
        analysis.problems.append(DockerfileProblem(
            "build_args", f"{SYNTAX_BUILD_ARG} is not supported (it selects a frontend image to pull and run)"))
    for command in commands:
        name = command.cmd.upper()
        if name == "ARG" and current is None:
            for item in command.value:
                key, sep, default = item.partition("=")
                global_args[key] = build_args[key] if key in build_args else (_unquote(default) if sep else "")
            continue
        if name == "FROM":
            words = list(command.value)
            if not words:
                analysis.problems.append(
                    DockerfileProblem("dockerfile", f"FROM on line {command.start_line} names no image")
                )
                continue
            written = words[0]
            stage_name = words[2].lower() if len(words) >= 3 and words[1].upper() == "AS" else None
            resolved = expand_variables(written, global_args)
            base = analysis.stage_named(resolved)
            if not resolved:
                analysis.problems.append(
                    DockerfileProblem(
                        "dockerfile", f"FROM on line {command.start_line} resolves to an empty image name ({written})"
                    )
                )
            elif base is None and resolved.lower() in all_names:
                analysis.forward_alias_lines.append(command.start_line)
            if resolved and base is None and resolved.lower() != "scratch":
                analysis.images.append(ImageUse(written, resolved, command.start_line, "FROM", "$" in written))
                _check_reference(analysis, resolved, command.start_line)
            current = Stage(
                len(analysis.stages),
                stage_name,
                written,
                resolved,
                command.start_line,
                base.index if base is not None else None,
            )
            analysis.stages.append(current)
            if base is not None:
                scope = _Scope(dict(scopes[base.index].values), scopes[base.index].open)
            else:
                scope = _Scope({}, open=resolved.lower() != "scratch")
            scopes.append(scope)
            continue
        if current is None:
            if name not in ("ARG",):
                analysis.problems.append(
                    DockerfileProblem("dockerfile", f"line {command.start_line}: {name} comes before the first FROM")
                )
            continue
        if name in _STEP_INSTRUCTIONS:
            current.instructions += 1
            current.instruction_lines.append(command.start_line)
        if name == "ARG":
            for item in command.value:
                key, sep, default = item.partition("=")
                if key in build_args:
                    scope.values[key] = build_args[key]
                elif sep:
                    scope.values[key] = scope.expand(default)
                else:
                    scope.values[key] = global_args.get(key, "")
                if _UNKNOWN in (scope.values[key] or ""):
                    scope.values[key] = None
        if name == "ENV":
            words = list(command.value)
            for key, raw in zip(words[0::2], words[1::2], strict=False):
                value = scope.expand(raw)
                scope.values[key] = None if _UNKNOWN in value else value
        if name == "ADD":
            _add_download(command, scope, analysis)
        references: list[str] = []
        if name in ("COPY", "ADD"):
            from_value = _flag_value(command.flags, "from")
            if from_value:
                references.append(from_value)
        if name == "RUN":
            references.extend(_mount_from_values(command.flags))
        for reference in references:
            if reference.isdigit():
                current.stage_refs.add(int(reference))
                continue
            named = analysis.stage_named(reference)
            if named is not None:
                current.stage_refs.add(named.index)
                continue
            analysis.images.append(ImageUse(reference, reference, command.start_line, "--from", "$" in reference))
            _check_reference(analysis, reference, command.start_line)
    if not analysis.stages:
        # Instructions without any FROM: one clear reason instead of one per line.
        analysis.problems = [p for p in analysis.problems if "before the first FROM" not in p.message]
        analysis.problems.insert(0, DockerfileProblem("dockerfile", "has no FROM instruction"))
    return analysis


def _check_reference(analysis: DockerfileAnalysis, reference: str, line: int) -> None:
    try:
        parse_reference(reference)
    except InvalidReferenceError as error:
        analysis.problems.append(DockerfileProblem("dockerfile", f"line {line}: {error}"))
        return
    if explicit_registry(reference) is None and "/" in reference.partition("@")[0]:
        # ``ns/name`` names a template namespace on this server; BuildKit would pull it from Docker Hub.
        analysis.problems.append(DockerfileProblem(
            "dockerfile", f"line {line}: {reference!r} has no registry host, and 'namespace/name' refs name "
            f"templates on this server: write docker.io/{reference} for the Docker Hub image"))


def dockerfile_request_problems(
    dockerfile: str,
    *,
    build_args: Mapping[str, str] | None = None,
    build_target: str | None = None,
    registry_auth_hosts: Sequence[str] = (),
    has_base_image_auth: bool = False,
    internet_access: bool = True,
) -> list[DockerfileProblem]:
    """Every Dockerfile-dependent request rule a request breaks (empty list = acceptable)."""
    analysis = analyse_dockerfile(dockerfile, build_args)
    problems = list(analysis.problems)
    if problems:
        return problems
    if not internet_access:
        for download in analysis.downloads:
            problems.append(DockerfileProblem(
                "dockerfile", f"line {download.line}: ADD downloads {download.urls[0]!r}, but "
                "build_config.internet_access is false (the build has no network); copy the file from the "
                "build context instead"))
    if build_target is not None and analysis.stage_named(build_target) is None:
        names = ", ".join(s.name for s in analysis.stages if s.name) or "none"
        problems.append(DockerfileProblem("build_target", f"no stage named {build_target!r} (stages: {names})"))
    hosts = analysis.hosts
    seen: set[str] = set()
    for i, raw_host in enumerate(registry_auth_hosts):
        host = canonical_host(raw_host)
        if host in seen:
            problems.append(DockerfileProblem(f"registry_auth[{i}].registry", f"{raw_host!r} is listed twice"))
        seen.add(host)
        if host not in hosts:
            used = ", ".join(hosts) or "none"
            problems.append(
                DockerfileProblem(
                    f"registry_auth[{i}].registry",
                    f"{raw_host!r} is not a registry the Dockerfile pulls from (hosts used: {used})",
                )
            )
    if has_base_image_auth:
        problems.extend(_base_image_auth_problems(analysis))
    return problems


def _base_image_auth_problems(analysis: DockerfileAnalysis) -> list[DockerfileProblem]:
    problems: list[DockerfileProblem] = []
    for image in analysis.images:
        if image.uses_variable:
            problems.append(
                DockerfileProblem(
                    "base_image_auth",
                    f"{image.via} on line {image.line} uses a variable ({image.written}); base_image_auth needs "
                    "literal image references so the registry it is for is known",
                )
            )
        if image.via == "--from":
            problems.append(
                DockerfileProblem(
                    "base_image_auth",
                    f"line {image.line} imports the image {image.written!r} through --from (an alias-based "
                    "imported stage); import it with its own FROM ... AS <name> stage",
                )
            )
    for line in analysis.forward_alias_lines:
        problems.append(
            DockerfileProblem(
                "base_image_auth",
                f"FROM on line {line} names a stage alias defined only later, which BuildKit imports as an image "
                "(alias-based imported stage)",
            )
        )
    hosts = analysis.hosts
    if not hosts:
        problems.append(DockerfileProblem("base_image_auth", "the Dockerfile imports no registry image to use it for"))
    elif len(hosts) > 1:
        problems.append(
            DockerfileProblem(
                "base_image_auth",
                f"the Dockerfile pulls from more than one external registry ({', '.join(hosts)}); "
                "use registry_auth with one entry per registry",
            )
        )
    return problems


def check_dockerfile_request(
    dockerfile: str,
    *,
    build_args: Mapping[str, str] | None = None,
    build_target: str | None = None,
    registry_auth_hosts: Sequence[str] = (),
    has_base_image_auth: bool = False,
    internet_access: bool = True,
) -> DockerfileAnalysis:
    """Like ``dockerfile_request_problems`` but raises ``DockerfileRequestError``; returns the analysis."""
    problems = dockerfile_request_problems(
        dockerfile,
        build_args=build_args,
        build_target=build_target,
        registry_auth_hosts=registry_auth_hosts,
        has_base_image_auth=has_base_image_auth,
        internet_access=internet_access,
    )
    if problems:
        raise DockerfileRequestError(problems)
    return analyse_dockerfile(dockerfile, build_args)


def base_image_auth_host(dockerfile: str, build_args: Mapping[str, str] | None = None) -> str:
    """The one registry host ``base_image_auth`` applies to (call after the request passed the checks)."""
    hosts = analyse_dockerfile(dockerfile, build_args).hosts
    if len(hosts) != 1:
        raise DockerfileRequestError(
            [DockerfileProblem("base_image_auth", f"needs exactly one registry host, found {len(hosts)}")]
        )
    return hosts[0]
