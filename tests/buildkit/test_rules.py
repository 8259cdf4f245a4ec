"""Pure parts: Dockerfile request rules, variable expansion, context tars, wire format, progress mapping."""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from amber.buildkit import wire
from amber.buildkit.build import NONCE_ARG, inject_nonce
from amber.buildkit.context import context_entries, write_context_tar
from amber.buildkit.daemon import DockerdLayout, dockerd_command
from amber.buildkit.progress import ProgressTranslator, TraceUpdate, Vertex, decode_trace, rerun_instructions
from amber.buildkit.session import credential_host_key
from amber.builds.planning.runtime import image_defaults, map_healthcheck
from amber.contract.dockerfile import (
    DockerfileProblem,
    DockerfileRequestError,
    analyse_dockerfile,
    base_image_auth_host,
    check_dockerfile_request,
    dockerfile_request_problems,
    expand_variables,
)
from amber.contract.images import registry_host
from amber.contract.logs import CacheStatus, LogKind, LogPhase
from amber.oci.config import ImageConfig
from tests.buildkit.conftest import ContextFile

R = "127.0.0.1:5000"


def fields_of(problems: Sequence[DockerfileProblem]) -> list[tuple[str, str]]:
    return [(p.field, p.message) for p in problems]


@pytest.mark.parametrize(
    ("reference", "host"),
    [
        ("busybox", "docker.io"),
        ("library/busybox:1", "docker.io"),
        ("docker.io/library/busybox", "docker.io"),
        ("index.docker.io/x/y", "docker.io"),
        ("127.0.0.1:5000/team/app:tag", "127.0.0.1:5000"),
        ("localhost/app", "localhost"),
        ("Registry.Example.com/a/b@sha256:" + "0" * 64, "registry.example.com"),
    ],
)
def test_reference_host(reference: str, host: str) -> None:
    assert registry_host(reference) == host


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("${B}", "x"),
        ("$B/y", "x/y"),
        ("${MISSING:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${B:+alt}", "alt"),
        ("${MISSING+alt}", ""),
        ("${MISSING}", ""),
    ],
)
def test_expand_variables(word: str, expected: str) -> None:
    assert expand_variables(word, {"B": "x", "EMPTY": ""}) == expected


def test_analysis_resolves_global_args_from_build_args_over_defaults() -> None:
    text = f"ARG BASE={R}/default\nFROM ${{BASE}} AS base\nRUN true\nFROM base AS final\nCOPY --from=base / /\n"
    assert [i.resolved for i in analyse_dockerfile(text).images] == [f"{R}/default"]
    analysis = analyse_dockerfile(text, {"BASE": "127.0.0.1:6000/other"})
    assert [i.resolved for i in analysis.images] == ["127.0.0.1:6000/other"]
    assert analysis.hosts == ["127.0.0.1:6000"]
    assert [s.name for s in analysis.stages] == ["base", "final"]
    assert analysis.stages[1].base_stage == 0
    assert analysis.instruction_count("base") == 2  # FROM + RUN
    assert analysis.instruction_count("final") == 3  # both stages; FROM base is no step of its own
    assert analysis.step_offsets("final") == {"base": 0, "final": 2}


def test_unparseable_and_empty_dockerfiles_name_the_field() -> None:
    assert fields_of(dockerfile_request_problems("")) == [("dockerfile", "does not parse: file with no instructions")]
    assert fields_of(dockerfile_request_problems("RUN true\n")) == [("dockerfile", "has no FROM instruction")]
    problems = dockerfile_request_problems(f"RUN true\nFROM {R}/a\n")
    assert fields_of(problems) == [("dockerfile", "line 1: RUN comes before the first FROM")]
    problems = dockerfile_request_problems("ARG X\nFROM ${X}\n")
    assert problems[0].field == "dockerfile" and "empty image name" in problems[0].message


def test_build_target_must_name_a_stage() -> None:
    text = f"FROM {R}/a AS one\nFROM one AS two\n"
    assert dockerfile_request_problems(text, build_target="two") == []
    assert dockerfile_request_problems(text, build_target="TWO") == []
    assert fields_of(dockerfile_request_problems(text, build_target="three")) == [
        ("build_target", "no stage named 'three' (stages: one, two)")
    ]


def test_registry_auth_must_match_a_used_host() -> None:
    text = f"FROM {R}/a AS one\nFROM busybox\nCOPY --from=quay.io/x/y:1 /a /b\n"
    assert dockerfile_request_problems(text, registry_auth_hosts=[R, "docker.io", "quay.io"]) == []
    assert dockerfile_request_problems(text, registry_auth_hosts=["https://index.docker.io/v1/"]) == []
    problems = dockerfile_request_problems(text, registry_auth_hosts=[R, "ghcr.io", R])
    assert [p.field for p in problems] == ["registry_auth[1].registry", "registry_auth[2].registry"]
    assert "'ghcr.io' is not a registry the Dockerfile pulls from" in problems[0].message
    assert "127.0.0.1:5000, docker.io, quay.io" in problems[0].message
    assert "listed twice" in problems[1].message


def test_base_image_auth_rejects_variable_from() -> None:
    text = f"ARG BASE={R}/a\nFROM ${{BASE}}\n"
    problems = dockerfile_request_problems(text, has_base_image_auth=True)
    assert [p.field for p in problems] == ["base_image_auth"]
    assert "FROM on line 2 uses a variable (${BASE})" in problems[0].message


def test_base_image_auth_rejects_alias_based_imported_stages() -> None:
    via_from_flag = f"FROM {R}/a AS one\nCOPY --from={R}/b:1 /x /y\n"
    problems = dockerfile_request_problems(via_from_flag, has_base_image_auth=True)
    assert fields_of(problems)[0][0] == "base_image_auth"
    assert "imports the image '127.0.0.1:5000/b:1' through --from (an alias-based imported stage)" in str(problems[0])
    forward = f"FROM later AS first\nRUN true\nFROM {R}/a AS later\n"
    problems = dockerfile_request_problems(forward, has_base_image_auth=True)
    assert any("names a stage alias defined only later" in p.message for p in problems)
    # Without base_image_auth both are ordinary Dockerfiles.
    assert dockerfile_request_problems(via_from_flag) == []


def test_base_image_auth_rejects_more_than_one_registry_and_none() -> None:
    two = f"FROM {R}/a AS one\nFROM 127.0.0.1:6000/b\nCOPY --from=one /x /y\n"
    problems = dockerfile_request_problems(two, has_base_image_auth=True)
    assert fields_of(problems) == [
        (
            "base_image_auth",
            "the Dockerfile pulls from more than one external registry (127.0.0.1:5000, 127.0.0.1:6000); "
            "use registry_auth with one entry per registry",
        )
    ]
    scratch = "FROM scratch\nCOPY a /a\n"
    assert fields_of(dockerfile_request_problems(scratch, has_base_image_auth=True)) == [
        ("base_image_auth", "the Dockerfile imports no registry image to use it for")
    ]
    one = f"FROM {R}/a AS one\nFROM {R}/b\nCOPY --from=one /x /y\n"
    assert dockerfile_request_problems(one, has_base_image_auth=True) == []
    assert base_image_auth_host(one) == R


def test_check_raises_with_field_and_reason() -> None:
    with pytest.raises(DockerfileRequestError) as caught:
        check_dockerfile_request(f"FROM {R}/a\n", build_target="nope")
    assert caught.value.field == "build_target"
    assert "no stage named 'nope'" in caught.value.reason


def test_inject_nonce_follows_every_from_including_continuations() -> None:
    text = f"FROM {R}/a \\\n  AS one\nRUN true\nFROM one\nRUN env\n"
    result = inject_nonce(text, analyse_dockerfile(text))
    assert result.split("\n") == [
        f"FROM {R}/a \\",
        "  AS one",
        f"ARG {NONCE_ARG}",
        "RUN true",
        "FROM one",
        f"ARG {NONCE_ARG}",
        "RUN env",
        "",
    ]


def test_context_tar_is_gnu_format_with_implicit_parents(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"from a blob")
    entries = context_entries(
        [
            ContextFile.text("app/main.py", "print(1)\n", mode="0755"),
            ContextFile("app/data.bin", blob_id="sha256:abc"),
            ContextFile("empty", entry_type="dir", mode="0700"),
        ],
        {"sha256:abc": blob},
    )
    context = write_context_tar(tmp_path / "ctx.tar", entries, dockerfile="FROM scratch\n", dockerfile_path=None)
    first_block = (tmp_path / "ctx.tar").read_bytes()[:512]
    assert b"PaxHeader" not in first_block and first_block[257:263] == b"ustar "  # GNU magic
    with tarfile.open(tmp_path / "ctx.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["app"].isdir() and members["app"].mode == 0o755
        assert members["app/main.py"].mode == 0o755
        assert members["empty"].mode == 0o700
        assert tar.extractfile("app/data.bin").read() == b"from a blob"  # type: ignore[union-attr]
        ignore = tar.extractfile(".dockerignore").read().decode()  # type: ignore[union-attr]
        assert context.dockerfile_name in ignore.split() and ".dockerignore" in ignore.split()
        assert tar.extractfile(context.dockerfile_name).read() == b"FROM scratch\n"  # type: ignore[union-attr]


def test_context_rejections_name_the_entry(tmp_path: Path) -> None:
    cases = [
        ([ContextFile.text("../x", "a")], "build_context.files[0].path"),
        ([ContextFile.text("/abs", "a")], "build_context.files[0].path"),
        ([ContextFile.text("ok", "a"), ContextFile("b", blob_id="sha256:missing")], "build_context.files[1].blob_id"),
        ([ContextFile("c", content_base64="***")], "build_context.files[0].content_base64"),
    ]
    for files, field in cases:
        with pytest.raises(DockerfileRequestError) as caught:
            context_entries(files, {})
        assert caught.value.field == field
    entries = context_entries([ContextFile.text("a", "x")], {})
    with pytest.raises(DockerfileRequestError) as caught:
        write_context_tar(tmp_path / "t.tar", entries, dockerfile=None, dockerfile_path="sub/Dockerfile")
    assert caught.value.field == "dockerfile_path"
    with pytest.raises(DockerfileRequestError) as caught:
        write_context_tar(
            tmp_path / "t.tar",
            [*entries, *context_entries([ContextFile.text("a/b", "y")], {})],
            dockerfile="FROM scratch",
            dockerfile_path=None,
        )
    assert (
        caught.value.field == "build_context.files" and "'a/b' lies below 'a', which is a file" in caught.value.reason
    )


def test_wire_round_trip() -> None:
    message = (
        wire.encode_string(1, "id-1")
        + wire.encode_bytes(4, b"\x00\xff")
        + wire.encode_varint(3 << 3)
        + wire.encode_varint(300)
    )
    fields = wire.decode(message)
    assert fields.string(1) == "id-1" and fields.bytes_(4) == b"\x00\xff" and fields.int_(3) == 300
    with pytest.raises(ValueError):
        wire.decode(wire.encode_bytes(1, b"abc")[:-1])


def _status(vertexes: list[bytes] = [], logs: list[bytes] = []) -> bytes:  # noqa: B006
    return b"".join(wire.encode_bytes(1, v) for v in vertexes) + b"".join(wire.encode_bytes(3, log) for log in logs)


def _vertex(digest: str, name: str, *, cached: bool = False, started: bool = False, done: bool = False) -> bytes:
    out = wire.encode_string(1, digest) + wire.encode_string(3, name)
    if cached:
        out += wire.encode_varint(4 << 3) + wire.encode_varint(1)
    if started:
        out += wire.encode_bytes(5, wire.encode_varint(1 << 3) + wire.encode_varint(1))
    if done:
        out += wire.encode_bytes(6, wire.encode_varint(1 << 3) + wire.encode_varint(2))
    return out


def test_progress_translation_steps_lines_cache_and_redaction() -> None:
    translator = ProgressTranslator(total_steps=3, step_offsets={"": 0}, redact=lambda s: s.replace("hunter2", "***"))
    events = translator.feed(
        decode_trace(
            _status(
                [
                    _vertex("d0", "[internal] load metadata for x", started=True),
                    _vertex("d1", "[1/3] FROM x", cached=True),
                    _vertex("d2", "[2/3] RUN echo hi", started=True),
                ]
            )
        )
    )
    events += translator.feed(
        decode_trace(
            _status(
                logs=[
                    wire.encode_string(1, "d2") + wire.encode_bytes(4, b"line one\nline two hun"),
                ]
            )
        )
    )
    events += translator.feed(
        decode_trace(
            _status(
                [_vertex("d2", "[2/3] RUN echo hi", started=True, done=True)],
                [wire.encode_string(1, "d2") + wire.encode_bytes(4, b"ter2\n")],
            )
        )
    )
    summary = [(e.kind, e.phase, e.step_index, e.message) for e in events]
    assert summary == [
        (LogKind.MESSAGE, LogPhase.PREPARING, None, "[internal] load metadata for x"),
        (LogKind.CACHE, LogPhase.STEP, 1, "[1/3] FROM x (cached)"),
        (LogKind.MESSAGE, LogPhase.STEP, 2, "[2/3] RUN echo hi"),
        (LogKind.MESSAGE, LogPhase.STEP, 2, "line one"),
        (LogKind.MESSAGE, LogPhase.STEP, 2, "line two ***"),
    ]
    assert events[1].cache_status is CacheStatus.HIT and events[1].total_steps == 3
    assert (translator.cache_hits, translator.cache_misses) == (1, 1)


def test_image_config_mapping() -> None:
    config = ImageConfig.from_engine(
        {
            "Os": "linux",
            "Architecture": "amd64",
            "Config": {
                "User": "app",
                "Env": ["PATH=/bin", "A=b=c"],
                "WorkingDir": "/srv",
                "Cmd": ["/bin/sh"],
                "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
                "Volumes": {"/data": {}},
                "Labels": {"k": "v"},
                "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 3},
            },
            "RootFS": {"Type": "layers", "Layers": ["sha256:" + "1" * 64]},
        }
    )
    assert str(config.platform) == "linux/amd64" and config.diff_ids == ("sha256:" + "1" * 64,)
    assert config.env_map == {"PATH": "/bin", "A": "b=c"}
    assert config.oci_metadata() == {
        "labels": {"k": "v"},
        "exposed_ports": ["53/udp", "8080/tcp"],
        "volumes": ["/data"],
        "healthcheck": {"test": ["CMD-SHELL", "true"], "interval_ns": 5_000_000_000, "retries": 3},
    }
    disabled = ImageConfig.from_engine({"Config": {"Healthcheck": {"Test": ["NONE"]}}})
    assert disabled.healthcheck is not None and disabled.healthcheck.test == ("NONE",)  # kept, as from_json keeps it
    assert map_healthcheck(image_defaults(disabled).healthcheck) is None  # … and maps to no probe


def test_dockerd_command_is_isolated(tmp_path: Path) -> None:
    layout = DockerdLayout(tmp_path)
    command = dockerd_command(layout)
    assert command[0] == "/usr/sbin/dockerd"
    for flag in (
        "--iptables=false",
        "--ip-forward=false",
        f"--bridge={layout.bridge}",  # its own isolated bridge (amber.isolation), never docker0 or the host's
        "--storage-driver=overlay2",
        f"--host=unix://{tmp_path}/docker.sock",
        f"--data-root={tmp_path}/data",
        f"--pidfile={tmp_path}/dockerd.pid",
        f"--config-file={tmp_path}/daemon.json",
    ):
        assert flag in command
    assert len(str(layout.exec_root / "containerd" / "containerd.sock")) < 100
    assert layout.bridge.startswith("amber-bk") and len(layout.bridge) <= 15


def test_step_index_follows_dockerfile_order_not_update_order() -> None:
    text = f"FROM {R}/a AS base\nRUN one\nFROM base AS final\nCOPY --from=base /x /y\nRUN two\n"
    analysis = analyse_dockerfile(text)
    translator = ProgressTranslator(
        total_steps=analysis.instruction_count(None), step_offsets=analysis.step_offsets(None)
    )
    events = translator.feed(
        decode_trace(
            _status(
                [
                    _vertex("r2", "[final 2/2] RUN two", started=True),
                    _vertex("c1", "[final 1/2] COPY --from=base /x /y", started=True),
                    _vertex("f1", "[base 1/2] FROM x", cached=True),
                    _vertex("r1", "[base 2/2] RUN one", cached=True),
                    _vertex("zz", "[other 1/1] RUN ?", started=True),
                ]
            )
        )
    )
    assert [(e.step_index, e.total_steps) for e in events] == [(4, 4), (3, 4), (1, 4), (2, 4), (5, 4)]


def test_inline_dockerfile_keeps_the_users_dockerignore(tmp_path: Path) -> None:
    entries = context_entries([ContextFile.text(".dockerignore", "*.log\n"), ContextFile.text("a.log", "x")], {})
    context = write_context_tar(tmp_path / "c.tar", entries, dockerfile="FROM scratch\n", dockerfile_path=None)
    with tarfile.open(tmp_path / "c.tar") as tar:
        ignore = tar.extractfile(".dockerignore").read().decode().split()  # type: ignore[union-attr]
    assert ignore == ["*.log", context.dockerfile_name]  # the user's own file stays in the context as before


@pytest.mark.parametrize(
    ("host", "key"),
    [("registry-1.docker.io", "docker.io"), ("https://index.docker.io/v1/", "docker.io"), ("Quay.IO", "quay.io"),
     ("127.0.0.1:5000", "127.0.0.1:5000")],
)  # fmt: skip
def test_credential_host_keys(host: str, key: str) -> None:
    assert credential_host_key(host) == key


def _solve(*vertices: tuple[str, bool]) -> ProgressTranslator:
    """A translator fed one solve's vertices as BuildKit reports them: (name, cached), each started and done."""
    translator = ProgressTranslator(total_steps=4, step_offsets={"": 0})
    for name, cached in vertices:
        translator.feed(TraceUpdate([Vertex(name, name)]))
        translator.feed(TraceUpdate([Vertex(name, name, cached=cached, started=True, completed=True)]))
    return translator


def test_rerun_instructions_tell_whether_the_export_is_the_solved_image() -> None:
    base = "[1/3] FROM 127.0.0.1:5000/team/busybox:latest@sha256:" + "a" * 64
    steps = ["[2/3] COPY site/ /srv/", '[3/3] RUN echo "plain" > /srv/flavour']
    image = _solve(("copy /context /", False), (base, False), *((s, False) for s in steps))
    # The export of the same build: the image source is reported as run (same digest), everything else cached.
    same = _solve(("copy /context /", True), (base, False), *((s, True) for s in steps))
    assert rerun_instructions(image, same) == set()
    # The base tag moved in between: another digest, and the steps over it ran again.
    moved = base.replace("a" * 64, "b" * 64)
    other = _solve((moved, False), *((s, False) for s in steps))
    assert rerun_instructions(image, other) == {moved, *steps}
    # A step evicted from BuildKit's cache in between and run again.
    assert rerun_instructions(image, _solve((base, False), (steps[0], True), (steps[1], False))) == {steps[1]}
