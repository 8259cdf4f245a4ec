"""The SDK end to end: streaming and background builds with real VMs, polling and log replay/follow, cancel,
retry, promote, plan/validate, claims, tags, aliases, rename, visibility, list/get/exists/delete, build history,
namespaces, bad input, unknown refs, caller scoping and wrong keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from nullspace import (
    AuthError,
    BuildError,
    ConflictError,
    MachineError,
    NotFoundError,
    Template,
    TemplateAliasInfo,
    TemplateBuild,
    TemplateBuildLogEntry,
    TemplateInfo,
    TemplateTagInfo,
    wait_for_port,
)

from tests.contract.conftest import Conn, Sdk, leftover_vms, unique

pytestmark = pytest.mark.vm


def get_info(ref: str, conn: Conn) -> TemplateInfo:
    info = Template.get(ref, **conn)
    assert isinstance(info, TemplateInfo)
    return info


def tags_of(ref: str, conn: Conn) -> dict[str, str]:
    """tag -> build id (the SDK's own annotation of get_tags confuses type checkers: ``list`` is a method)."""
    tags = cast(list[TemplateTagInfo], Template.get_tags(ref, **conn))
    return {t.tag: t.build_id for t in tags}


def alias_refs(ref: str, conn: Conn) -> list[str]:
    return [a.alias_ref for a in cast(list[TemplateAliasInfo], Template.list_aliases(ref, **conn))]


def rename(ref: str, new_name: str, conn: Conn) -> TemplateInfo:
    """``Template.rename`` called on the class with a ref, as the SDK documents (its annotation says otherwise)."""
    info = cast(Any, Template).rename(ref, new_name, **conn)
    assert isinstance(info, TemplateInfo)
    return info


@pytest.fixture(scope="module")
def context_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ctx")
    (d / "site").mkdir()
    (d / "site" / "index.html").write_text("<h1>amber</h1>\n")
    (d / "site" / "empty.txt").write_text("")
    return d


def service_template(sdk: Sdk, context_dir: Path, marker: str) -> Template:
    """Steps of several kinds, a copied directory (preflight + upload), build envs, start command, tcp probe."""
    return (
        Template.from_image(sdk.base_image)
        .copy(str(context_dir / "site"), "/srv/site")
        .make_dir("/srv/data", mode=0o750)
        .set_workdir("/srv")
        .run_cmd(f'echo "$GREETING {marker}" > /srv/data/greeting')
        .set_build_envs({"GREETING": "hello"})
        .set_start_cmd("httpd -f -p 8080 -h /srv/site", wait_for_port(8080))
    )


@pytest.fixture(scope="module")
def built(sdk: Sdk, context_dir: Path) -> Iterator[TemplateBuild]:
    """One streaming build shared by the management tests."""
    entries: list[TemplateBuildLogEntry] = []
    name = unique("web")
    build = Template.build(service_template(sdk, context_dir, name), f"{name}:stable", on_log_entry=entries.append,
                           **sdk.acme)
    assert build.status.value == "ready"
    kinds = [e.kind.value for e in entries]
    assert kinds[0] == "start" and kinds[-1] == "end"
    phases = {e.phase for e in entries if e.phase}
    assert {"preparing", "vm_create", "step", "startup", "readiness", "snapshot"} <= phases
    assert [e.offset for e in entries] == list(range(len(entries)))
    assert all(e.build_id == build.build_id for e in entries)
    yield build
    build.close()


def test_streaming_build_result(sdk: Sdk, built: TemplateBuild) -> None:
    info = get_info(built.canonical_ref, sdk.acme)
    assert info.id == built.template_id
    assert info.canonical_ref == f"acme/{built.name}:stable"
    assert info.runtime_defaults is not None
    assert info.runtime_defaults.start_cmd == "httpd -f -p 8080 -h /srv/site"
    assert info.runtime_defaults.readiness is not None and info.runtime_defaults.readiness["kind"] == "tcp"
    assert "GREETING" not in info.runtime_defaults.default_env_keys  # build envs exist only during the build
    assert Template.exists(built.name, **sdk.acme) is True
    assert Template.exists(unique("missing"), **sdk.acme) is False


def test_background_build_poll_replay_and_follow(sdk: Sdk, context_dir: Path) -> None:
    name = unique("bg")
    handle = Template.build_in_background(service_template(sdk, context_dir, name), name, **sdk.acme)
    assert handle.status.value in ("waiting", "building")
    followed = [e for e in handle.logs(offset=0, follow=True)]  # live follow until the terminal entry
    assert followed[0].kind.value == "start" and followed[-1].kind.value == "end"
    polled: list[TemplateBuildLogEntry] = []
    snapshot = handle.wait_until_terminal(poll_interval=0.2, on_log_entry=polled.append)
    assert handle.status.value == "ready" and snapshot.next_offset == len(followed)
    assert [e.offset for e in polled] == [e.offset for e in followed]
    replay = list(handle.logs(offset=3))
    assert [e.offset for e in replay] == list(range(3, len(followed)))
    again = TemplateBuild.connect(handle.build_id, **sdk.acme)
    assert again.template_id == handle.template_id and again.status.value == "ready"
    assert again.promotability is not None and again.promotability.promotable is True
    history = Template.list_builds(name, **sdk.acme).builds
    assert [b.build_id for b in history] == [handle.build_id]
    by_id = Template.list_builds(handle.template_id, **sdk.acme).builds
    assert [b.build_id for b in by_id] == [handle.build_id]
    handle.close()
    again.close()


def test_cached_rebuild_and_promote(sdk: Sdk, context_dir: Path, built: TemplateBuild) -> None:
    entries: list[TemplateBuildLogEntry] = []
    again = Template.build(service_template(sdk, context_dir, built.name), f"{built.name}:next",
                           on_log_entry=entries.append, **sdk.acme)
    assert again.template_id != built.template_id
    cache = [e for e in entries if e.kind.value == "cache" and e.cache_status is not None]
    assert cache and all(e.cache_status is not None and e.cache_status.value == "hit" for e in cache)
    first = TemplateBuild.connect(built.build_id, **sdk.acme)
    info = first.promote(tag="next")
    assert info.id == built.template_id and info.canonical_ref == f"acme/{built.name}:next"
    tags = tags_of(built.name, sdk.acme)
    assert tags["next"] == built.build_id and tags["stable"] == built.build_id
    first.close()
    again.close()


def test_failing_step_reports_build_step(sdk: Sdk) -> None:
    name = unique("fail")
    template = Template.from_image(sdk.base_image).run_cmd("echo about to fail; exit 3")
    with pytest.raises(BuildError) as stream_error:
        Template.build(template, name, **sdk.acme)
    assert stream_error.value.phase is not None and stream_error.value.phase.value == "build_step"
    assert stream_error.value.step_index == 1
    assert "about to fail" in str(stream_error.value)
    handle = Template.build_in_background(template, name, **sdk.acme)
    with pytest.raises(BuildError):
        handle.wait_until_terminal(poll_interval=0.2)
    assert handle.status.value == "error" and handle.failure_phase == "build_step"
    assert handle.error_detail is not None and handle.error_detail.retryable is False
    retried = handle.retry()
    assert retried.retry_of_build_id == handle.build_id and retried.build_id != handle.build_id
    with pytest.raises(BuildError):
        retried.wait_until_terminal(poll_interval=0.2)
    history = Template.list_builds(name, status="error", **sdk.acme).builds
    assert {b.build_id for b in history} >= {handle.build_id, retried.build_id}
    with pytest.raises(ConflictError):
        handle.promote(tag="x")
    handle.close()


def test_cancel_running_build(sdk: Sdk) -> None:
    name = unique("slow")
    handle = Template.build_in_background(Template.from_image(sdk.base_image).run_cmd("sleep 300"), name, **sdk.acme)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        snapshot = handle.get_status()
        if any(e.phase and e.phase == "step" for e in snapshot.entries):
            break
        time.sleep(0.3)
    else:
        pytest.fail("the build never reached its step")
    cancelled = handle.cancel(reason="no longer needed")
    assert cancelled.build.status.value == "cancelled"
    assert cancelled.build.cancellation_reason == "no longer needed"
    kinds = [e.kind.value for e in handle.logs(offset=0)]
    assert kinds[-1] == "cancelled"
    handle.wait_until_terminal()  # returns normally for cancelled builds
    # The pipeline stops its VM promptly after a cancel.
    deadline = time.monotonic() + 60
    while leftover_vms(sdk.server.data_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftover_vms(sdk.server.data_dir)
    assert handle.cancel().build.status.value == "cancelled"  # idempotent
    handle.close()


def test_catalog_operations(sdk: Sdk, built: TemplateBuild) -> None:
    name = built.name
    info = Template.assign_tags(name, ["prod", "v1"], **sdk.acme)
    assert {"prod", "v1"} <= set(info.tags)
    Template.remove_tags(name, "v1", **sdk.acme)
    assert "v1" not in tags_of(name, sdk.acme)
    assert Template.set_visibility(f"acme/{name}", "public", **sdk.acme).visibility.value == "public"
    assert get_info(f"acme/{name}:prod", sdk.other).id  # public: readable by others
    assert Template.set_visibility(f"acme/{name}", "private", **sdk.acme).visibility.value == "private"
    with pytest.raises(NotFoundError):
        Template.get(f"acme/{name}:prod", **sdk.other)
    compact = Template.get(f"acme/{name}:prod", fields=["id", "canonical_ref"], **sdk.acme)
    assert compact == {"id": info.id, "canonical_ref": f"acme/{name}:prod"}
    assert any(isinstance(t, TemplateInfo) and t.name == name for t in Template.list(**sdk.acme))
    assert all(isinstance(t, dict) and set(t) == {"name"} for t in Template.list(fields=["name"], **sdk.acme))
    new_name = unique("renamed")
    renamed = rename(f"acme/{name}", new_name, sdk.acme)
    assert renamed.name == new_name
    assert alias_refs(new_name, sdk.acme) == [f"acme/{name}"]
    assert get_info(name, sdk.acme).name == new_name  # the old name is an alias
    Template.remove_alias(new_name, f"acme/{name}", **sdk.acme)
    assert alias_refs(new_name, sdk.acme) == []
    rename(new_name, name, sdk.acme)
    namespace = Template.get_namespace("acme", **sdk.acme)
    assert namespace.slug == "acme" and namespace.is_default is True and namespace.kind.value == "user"


def test_plan_validate_and_claims(sdk: Sdk, context_dir: Path) -> None:
    template = service_template(sdk, context_dir, "plan")
    plan = Template.plan(template, "planned", **sdk.acme)
    assert plan.source_type.value == "declarative" and plan.build_backend.value == "native"
    assert plan.requires_base_image_auth is False
    assert any("GREETING" in step for step in plan.build_plan["run_steps"])
    validation = Template.validate(template, "planned", **sdk.acme)
    assert validation.valid is True and validation.errors == []
    name = unique("claimed")
    claim = Template.reserve_name(name, **sdk.acme)
    assert claim.canonical_ref == f"acme/{name}"
    with pytest.raises(ConflictError):
        Template.reserve_name(name, **sdk.acme)
    Template.release_name_claim(claim.claim_token, **sdk.acme)
    with pytest.raises(NotFoundError):
        Template.release_name_claim(claim.claim_token, **sdk.acme)


def test_errors_through_the_sdk(sdk: Sdk, built: TemplateBuild) -> None:
    with pytest.raises(NotFoundError):
        Template.get("acme/does-not-exist:stable", **sdk.acme)
    with pytest.raises(NotFoundError):
        Template.get(f"acme/{built.name}:stable", **sdk.other)  # another caller's private template
    with pytest.raises(NotFoundError):
        TemplateBuild.connect(built.build_id, **sdk.other)  # another caller's build
    with pytest.raises(AuthError):
        Template.list(api_key="amber_not-a-key", base_url=sdk.server.url)
    with pytest.raises(MachineError) as bad_name:
        Template.build_in_background(Template.from_image(sdk.base_image).run_cmd("true"), name="bad name!",
                                     **sdk.acme)
    assert bad_name.value.code == "invalid_request" and "name" in str(bad_name.value)
    with pytest.raises(MachineError) as bad_env:
        Template.build_in_background(Template.from_image(sdk.base_image).set_build_envs({"BAD KEY": "x"}),
                                     unique("bad"), **sdk.acme)
    assert bad_env.value.code == "invalid_request" and "build_envs" in str(bad_env.value)
    with pytest.raises(NotFoundError):
        Template.delete("acme/does-not-exist", **sdk.acme)


def test_delete(sdk: Sdk) -> None:
    name = unique("doomed")
    build = Template.build(Template.from_image(sdk.base_image), name, **sdk.acme)
    assert Template.exists(name, **sdk.acme)
    Template.delete(f"acme/{name}", **sdk.acme)
    assert not Template.exists(name, **sdk.acme)
    with pytest.raises(NotFoundError):
        Template.list_builds(name, **sdk.acme)
    build.close()


def test_template_base_build(sdk: Sdk, built: TemplateBuild) -> None:
    """``from_template`` on the caller's own template; another caller cannot use it while it is private."""
    child = Template.from_template(f"acme/{built.name}:stable").run_cmd("cat /srv/data/greeting")
    name = unique("child")
    entries: list[TemplateBuildLogEntry] = []
    result = Template.build(child, name, on_log_entry=entries.append, **sdk.acme)
    assert result.status.value == "ready"
    assert any("base template" in e.message for e in entries)
    history = Template.list_builds(name, source_type="declarative", **sdk.acme).builds
    assert [b.build_id for b in history] == [result.build_id]
    with pytest.raises(MachineError) as denied:
        Template.build_in_background(Template.from_template(built.template_id), unique("theirs"), **sdk.other)
    assert denied.value.code == "invalid_request" and "base_image" in str(denied.value)
    result.close()


def test_blocking_create_returns_the_template(sdk: Sdk) -> None:
    """#1 (deprecated, never called by the SDK): blocks until the build ends, 201 TemplateInfo or a build_error."""
    name = unique("blocking")
    with httpx.Client(base_url=sdk.server.url, headers={"Authorization": f"Bearer {sdk.acme_key}"},
                      timeout=300) as client:
        created = client.post("/v1/templates", json={"name": name, "tags": ["v1"], "base_image": sdk.base_image})
        assert created.status_code == 201, created.text
        info = created.json()
        assert info["canonical_ref"] == f"acme/{name}:v1" and info["id"].startswith("tmpl_")
        failed = client.post("/v1/templates", json={"name": name, "base_image": sdk.base_image,
                                                     "steps": [{"action": "run", "command": "exit 7"}]})
    assert failed.status_code == 400
    body = failed.json()
    assert body["code"] == "build_error" and body["build_id"].startswith("tb_")
    assert body["error_detail"]["phase"] == "build_step" and body["error_detail"]["step_index"] == 1
    assert get_info(f"{name}:v1", sdk.acme).id == info["id"]
