"""Dockerfile templates end to end: the unmodified nullspace-sdk against a real ``amber serve`` (BuildKit in the
server's managed dockerd → rootfs → QEMU build VM → start command → readiness → snapshot), loopback registries
in all three auth modes, two tenants."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nullspace import BuildError, Template, TemplateBuild, TemplateBuildLogEntry, wait_for_file, wait_for_port
from nullspace.template import CommandReadinessProbe

from amber.vm import restore
from tests.buildkit.conftest import Images, scan_for
from tests.contract.conftest import Conn, data_dir_with_guest, leftover_vms
from tests.contract.test_log_bytes import EXPECTED_LINES, PRINT_EVERYTHING
from tests.support.server import AmberServer, running_server

pytestmark = [pytest.mark.vm, pytest.mark.docker]

SECRET = "sdk-secret-" + uuid.uuid4().hex
SECRET_SHA = hashlib.sha256(SECRET.encode()).hexdigest()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def ready_when(checks: str) -> tuple[str, CommandReadinessProbe]:
    """A start command that touches /tmp/ready only if ``checks`` pass, and the readiness probe waiting for it."""
    return f"sh -c '{checks} && touch /tmp/ready; exec sleep 100000'", wait_for_file("/tmp/ready", timeout_secs=15)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, images: Images) -> Iterator[AmberServer]:
    data_dir = data_dir_with_guest(tmp_path_factory)
    with running_server(data_dir, workers=1) as running:
        yield running
    assert not leftover_vms(data_dir), "VM run directories left behind"
    pidfile = data_dir / "dockerd" / "dockerd.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text().strip() or 0)
        assert not Path(f"/proc/{pid}").exists(), "amber serve left its dockerd running"


@pytest.fixture(scope="module")
def keys(server: AmberServer) -> dict[str, str]:
    return {"acme": server.create_key("acme"), "other": server.create_key("other")}


def conn(server: AmberServer, keys: dict[str, str], who: str = "acme") -> Conn:
    return {"api_key": keys[who], "base_url": server.url}


MULTI_STAGE = """\
ARG BASE={base}
FROM ${{BASE}} AS base
ARG GREETING=hello-default
RUN echo "$GREETING" > /greeting
FROM base AS builder
COPY app/ /app/
RUN --mount=type=secret,id=token cat /run/secrets/token | sha256sum | cut -d' ' -f1 > /app/secret.sha
FROM base AS final
COPY --from=builder /app /app
WORKDIR /app
EXPOSE 8080
LABEL org.example.built-by=amber
"""


def test_sdk_dockerfile_in_context_with_secret(
    server: AmberServer, keys: dict[str, str], images: Images, tmp_path: Path
) -> None:
    context = tmp_path / "ctx"
    (context / "sub").mkdir(parents=True)
    (context / "app").mkdir()
    (context / "app" / "hello.txt").write_text("hello from the context\n")
    (context / "sub" / "Dockerfile").write_text(MULTI_STAGE.format(base=images.public))
    # The secret itself must not reach the VM (its memory is snapshotted and scanned below): look for its first
    # half, which is in the tree iff the whole secret could be.
    start, readiness = ready_when(
        f'test "$(cat /app/secret.sha)" = {SECRET_SHA} && test "$(cat /greeting)" = hello-default'
        f' && grep -q "hello from the context" /app/hello.txt && ! grep -rqF {SECRET[:20]} /app /greeting /etc'
    )
    template = (
        Template.from_dockerfile(str(context / "sub" / "Dockerfile"), file_context_path=str(context))
        .add_build_secret("token", SECRET)
        .set_start_cmd(start, readiness)
    )
    entries: list[TemplateBuildLogEntry] = []
    build = Template.build(template, unique("dockerfile"), on_log_entry=entries.append, **conn(server, keys))
    assert build.status.value == "ready"
    assert build.build_backend is not None and build.build_backend.value == "buildkit"
    steps = [e for e in entries if e.phase == "step"]
    assert any("RUN --mount=type=secret,id=token" in e.message for e in steps)
    assert {"vm_create", "startup", "readiness", "snapshot"} <= {e.phase for e in entries if e.phase}
    assert all(SECRET not in e.message for e in entries)
    # The final stage's OCI metadata is kept (R38).
    assert build.oci_metadata is not None
    assert build.oci_metadata.labels.get("org.example.built-by") == "amber"
    assert build.oci_metadata.exposed_ports == ["8080/tcp"]
    assert build.runtime_defaults is not None and build.runtime_defaults.default_workdir == "/app"
    build.close()


def test_build_args_target_and_dockerfile_path(server: AmberServer, keys: dict[str, str], images: Images) -> None:
    """``build_args``, ``build_target`` and ``dockerfile_path`` are not sent by the SDK builder: raw HTTP."""
    dockerfile = MULTI_STAGE.format(base=images.public) + "FROM final AS broken\nRUN exit 1\n"
    start, readiness = ready_when('test "$(cat /greeting)" = hello-arg && test -s /app/secret.sha')

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    body = {
        "name": unique("args"),
        "dockerfile": dockerfile,
        "dockerfile_path": "docker/Dockerfile.prod",
        "build_args": {"GREETING": "hello-arg"},
        "build_target": "final",
        "build_context": {"files": [{"path": "app/hello.txt", "entry_type": "file", "content_base64": b64("hi\n")}]},
        "build_secrets": [{"id": "token", "value": SECRET, "source": "value"}],
        "start_cmd": start,
        "runtime_config": {"readiness": readiness.to_payload()},
    }
    with server.client(keys["acme"], timeout=600) as client:
        response = client.post("/v1/templates", json=body)
        assert response.status_code == 201, response.text
        assert response.json()["runtime_defaults"]["start_cmd"] == start
        bad = client.post("/v1/templates", json={**body, "build_target": "nope"})
        assert bad.status_code == 400 and "build_target" in bad.text and "no stage named 'nope'" in bad.text


def test_failed_run_step_reports_instruction_exit_code_and_output(
    server: AmberServer, keys: dict[str, str], images: Images
) -> None:
    dockerfile = (
        f"FROM {images.public} AS base\nRUN echo fine\nFROM base AS app\n"
        "RUN for i in $(seq 1 30); do echo out-$i; done; echo broken; exit 7\n"
    )
    entries: list[TemplateBuildLogEntry] = []
    with pytest.raises(BuildError) as caught:
        Template.build(Template.from_dockerfile_content(dockerfile), unique("fails"), on_log_entry=entries.append,
                       **conn(server, keys))  # fmt: skip
    error = caught.value
    assert error.phase is not None and error.phase.value == "build_step" and error.step_index == 3
    command = "RUN for i in $(seq 1 30); do echo out-$i; done; echo broken; exit 7"
    assert error.details is not None
    assert error.details["command"] == command and error.details["exit_code"] == 7
    message = str(caught.value)
    assert f"step 3: [app 1/1] {command} (Dockerfile line 4) exited with code 7; last output:\n" in message
    tail = message.split("last output:\n", 1)[1].splitlines()
    assert tail == [f"out-{i}" for i in range(12, 31)] + ["broken"]  # the last 20 of 31 lines
    assert entries[-1].kind.value == "error" and entries[-1].phase == "step"


def test_every_byte_a_run_step_prints_reaches_the_sdk(
    server: AmberServer, keys: dict[str, str], images: Images
) -> None:
    """Issue 12: U+2028, U+2029, U+0085, CR-only lines, NUL and invalid UTF-8 printed by a RUN survive the SSE
    stream, the SSE replay and polling, which show the same text (invalid UTF-8 as U+FFFD)."""
    dockerfile = f"FROM {images.public}\nRUN {PRINT_EVERYTHING} && echo {unique('nocache')}\n"
    streamed: list[TemplateBuildLogEntry] = []
    build = Template.build(Template.from_dockerfile_content(dockerfile), unique("bytes"), on_log_entry=streamed.append,
                           **conn(server, keys))  # fmt: skip
    assert build.status.value == "ready"
    texts = [e.message for e in streamed]
    for line in EXPECTED_LINES:
        assert line in texts, (line, texts)
    handle = TemplateBuild.connect(build.build_id, **conn(server, keys))
    assert [e.message for e in handle.logs(offset=0)] == texts
    assert [e.message for e in handle.get_status().entries] == texts
    handle.close()
    build.close()


def test_private_bases_and_a_second_tenant(server: AmberServer, keys: dict[str, str], images: Images) -> None:
    registry = images.htpasswd_registry
    assert registry.credentials is not None
    user, password = registry.credentials
    start, readiness = ready_when("test -x /bin/busybox")
    dockerfile = f"FROM {images.htpasswd}\nRUN echo private > /which\n"

    def private(password_to_use: str | None) -> Template:
        template = Template.from_dockerfile_content(dockerfile).set_start_cmd(start, readiness)
        if password_to_use is not None:
            template.set_base_image_auth(username=user, password=password_to_use)
        return template

    ok = Template.build(private(password), unique("private"), **conn(server, keys))
    assert ok.status.value == "ready"
    ok.close()
    for attempt in ("wrong-password", None):
        with pytest.raises(BuildError) as failed:
            Template.build(private(attempt), unique("private-bad"), **conn(server, keys))
        assert failed.value.phase is not None and failed.value.phase.value == "auth"
        assert images.htpasswd in str(failed.value) and "wrong-password" not in str(failed.value)

    # The first tenant's build left the image in BuildKit's cache; pinned by digest, another tenant without
    # credentials must still be refused (BuildKit alone would serve it).
    token_registry = images.token_registry
    assert token_registry.credentials is not None
    first = Template.from_dockerfile_content(f"FROM {images.token_private}\nRUN true\n").set_start_cmd(start, readiness)
    first.set_base_image_auth(username=token_registry.credentials[0], password=token_registry.credentials[1])
    entries: list[TemplateBuildLogEntry] = []
    built = Template.build(first, unique("tenant-a"), on_log_entry=entries.append, **conn(server, keys))
    assert built.status.value == "ready"
    built.close()
    digest = next(
        e.message.split("@", 1)[1].split()[0] for e in entries if "FROM" in e.message and "@sha256:" in e.message
    )
    pinned = f"FROM {images.token_private.rsplit(':', 1)[0]}@{digest}\nRUN true\n"
    with pytest.raises(BuildError) as refused:
        Template.build(
            Template.from_dockerfile_content(pinned).set_start_cmd(start, readiness),
            unique("tenant-b"),
            **conn(server, keys, "other"),
        )
    assert refused.value.phase is not None and refused.value.phase.value == "auth"


CACHED_DOCKERFILE = """\
FROM {base}
COPY site/ /srv/
ARG FLAVOUR=plain
RUN echo "$FLAVOUR" > /srv/flavour
WORKDIR /srv
"""
SERVE = "exec httpd -f -p 8080 -h /srv"


def cached_template(base: str, page: str, root: Path) -> Template:
    """A Dockerfile template whose start command serves ``page``; the context lives in ``root``."""
    (root / "site").mkdir(parents=True, exist_ok=True)
    (root / "site" / "index.html").write_text(page)
    (root / "Dockerfile").write_text(CACHED_DOCKERFILE.format(base=base))
    return Template.from_dockerfile(str(root / "Dockerfile"), file_context_path=str(root)).set_start_cmd(
        SERVE, wait_for_port(8080, timeout_secs=30)
    )


def cache_events(entries: list[TemplateBuildLogEntry]) -> dict[str, list[tuple[str, str | None]]]:
    """Amber's own cache entries (the base disk and the final artifact; BuildKit's per-instruction hits aside):
    kind -> [(status, reason)]."""
    found: dict[str, list[tuple[str, str | None]]] = {"base": [], "final": []}
    for e in entries:
        if e.phase != "cache" or not e.cache_status:
            continue
        reason = e.cache_reason.value if e.cache_reason else None
        if e.cache_kind and e.cache_kind.value == "final_artifact":
            found["final"].append((e.cache_status.value, reason))
        elif str(e.cache_subject or "").startswith("Dockerfile image sha256:"):
            found["base"].append((e.cache_status.value, reason))
    return found


def cache_files(data_dir: Path) -> set[str]:
    root = data_dir / "cache" / "build"
    return {p.relative_to(root).as_posix() for sub in ("base", "final") for p in (root / sub).glob("*")}


def test_identical_dockerfile_build_is_a_full_cache_hit(
    server: AmberServer, keys: dict[str, str], images: Images, tmp_path: Path
) -> None:
    template = cached_template(images.public, "cached page\n", tmp_path / "ctx")
    first: list[TemplateBuildLogEntry] = []
    before = cache_files(server.data_dir)
    built = Template.build(template, unique("cached"), on_log_entry=first.append, **conn(server, keys))
    assert built.status.value == "ready"
    miss = ("miss", "missing_or_incompatible")
    assert cache_events(first) == {"base": [miss, ("stored", None)], "final": [miss, ("stored", None)]}
    stored = {p for p in cache_files(server.data_dir) - before if p.endswith(".ok")}
    assert {p.split("/")[0] for p in stored} == {"base", "final"} and len(stored) == 2, stored
    second: list[TemplateBuildLogEntry] = []
    again = Template.build(template, unique("cached"), on_log_entry=second.append, **conn(server, keys))
    assert again.status.value == "ready"
    assert cache_events(second) == {"base": [("hit", None)], "final": [("hit", None)]}
    phases = {e.phase for e in second if e.phase}
    assert "vm_create" not in phases and "snapshot" not in phases  # nothing booted
    assert "preparing" in phases  # BuildKit still solved the Dockerfile (that is what the key is made of)
    assert again.runtime_defaults is not None and again.runtime_defaults.default_workdir == "/srv"
    assert again.runtime_defaults.start_cmd == SERVE
    artifact = server.data_dir / "artifacts" / again.build_id
    assert artifact.is_dir()
    with restore(artifact, data_dir=server.data_dir) as vm:  # the cached snapshot restores, still serving
        vm.agent.tcp_probe(8080)
        assert vm.exec(["wget", "-q", "-O", "-", "http://127.0.0.1:8080/index.html"]).stdout == b"cached page\n"
        assert vm.exec(["cat", "/srv/flavour"]).stdout == b"plain\n"
    built.close()
    again.close()

    # A changed context file is another image: the base disk and the final artifact miss.
    changed: list[TemplateBuildLogEntry] = []
    other = cached_template(images.public, "another page\n", tmp_path / "ctx2")
    rebuilt = Template.build(other, unique("cached"), on_log_entry=changed.append, **conn(server, keys))
    assert rebuilt.status.value == "ready"
    assert cache_events(changed) == {"base": [miss, ("stored", None)], "final": [miss, ("stored", None)]}
    assert "vm_create" in {e.phase for e in changed}
    rebuilt.close()

    # So is a changed build arg (raw HTTP: the SDK's builder sends no build_args).
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    body = {
        "name": unique("cached-arg"),
        "dockerfile": CACHED_DOCKERFILE.format(base=images.public),
        "build_args": {"FLAVOUR": "spicy"},
        "build_context": {
            "files": [{"path": "site/index.html", "entry_type": "file", "content_base64": b64("cached page\n")}]
        },
        "start_cmd": SERVE,
        "runtime_config": {"readiness": wait_for_port(8080, timeout_secs=30).to_payload()},
    }
    with server.client(keys["acme"], timeout=600) as client:
        response = client.post("/v1/templates/builds", json=body)
        assert response.status_code == 202, response.text
        build_id = response.json()["build_id"]
    arg_entries: list[TemplateBuildLogEntry] = []
    done = TemplateBuild.connect(build_id, **conn(server, keys)).wait_until_terminal(on_log_entry=arg_entries.append)
    assert done.build.status.value == "ready"
    assert cache_events(arg_entries) == {"base": [miss, ("stored", None)], "final": [miss, ("stored", None)]}


def test_dockerfile_builds_with_secrets_or_skip_cache_bypass_the_cache(
    server: AmberServer, keys: dict[str, str], images: Images, tmp_path: Path
) -> None:
    template = cached_template(images.public, "cached page\n", tmp_path / "ctx")
    warm = Template.build(template, unique("warm"), **conn(server, keys))  # cached by the test above (or now)
    warm.close()
    before = cache_files(server.data_dir)
    assert any(p.endswith(".raw.ok") for p in before) and before

    # The same Dockerfile with a secret: never a hit, nothing stored (its image differs only by the nonce).
    secret_entries: list[TemplateBuildLogEntry] = []
    secret_build = Template.build(
        cached_template(images.public, "cached page\n", tmp_path / "ctx").add_build_secret("token", SECRET),
        unique("secret"), on_log_entry=secret_entries.append, **conn(server, keys),
    )  # fmt: skip
    assert secret_build.status.value == "ready"
    bypass = ("bypass", "whole_build_skip_cache")
    assert cache_events(secret_entries) == {"base": [bypass], "final": [bypass]}
    assert "vm_create" in {e.phase for e in secret_entries}
    assert cache_files(server.data_dir) == before
    secret_build.close()

    skipped: list[TemplateBuildLogEntry] = []
    skip = Template.build(template, unique("skip"), skip_cache=True, on_log_entry=skipped.append,
                          **conn(server, keys))  # fmt: skip
    assert skip.status.value == "ready"
    assert cache_events(skipped) == {"base": [bypass], "final": [bypass]}
    assert "vm_create" in {e.phase for e in skipped}
    assert cache_files(server.data_dir) == before
    skip.close()


def test_no_secret_anywhere_in_the_data_dir(server: AmberServer, images: Images) -> None:
    """Runs after the builds above (file order): database, logs, artifacts, BuildKit's data root."""
    time.sleep(0.5)  # let the last log rows land
    registry = images.htpasswd_registry
    assert registry.password is not None
    needles = [SECRET.encode(), registry.password.encode()]
    found = scan_for(server.data_dir, needles)
    assert found == [], f"secret values found in {found}"
    assert os.path.getsize(server.data_dir / "amber.db") > 0  # the SQLite database was scanned too
