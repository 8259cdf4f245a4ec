"""Build journeys through the SDK, as a user would write them: log replay from arbitrary offsets (past the end, mid
stream, huge), follow of queued/terminal builds, cancel while queued and retry of the cancelled build, cancel of a
finished build, and a rebuild that moves the tag while the old artifact stays reachable by ``name:tb_…``."""

from __future__ import annotations

import threading
from typing import cast

import httpx
import pytest
from nullspace import BuildError, MachineError, Template, TemplateBuild, TemplateTagInfo

from tests.contract.conftest import Sdk, unique

# One SQLite server for the module (the PostgreSQL variant of the shared flows runs in test_sdk.py).
pytestmark = [pytest.mark.vm, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True, scope="module")]

HUGE_OFFSET = 2**64  # larger than any 64-bit database integer


def test_log_offsets_past_the_end(sdk: Sdk) -> None:
    """Offsets past the end (even beyond 64 bits) return nothing rather than failing; a follow started past the
    end closes when the build ends; a follow from mid-stream starts exactly there."""
    name = unique("offsets")
    handle = Template.build_in_background(Template.from_image(sdk.base_image).run_cmd(f"sleep 3 # {name}"), name,
                                          **sdk.acme)
    beyond: list[int] = []
    follower = threading.Thread(target=lambda: beyond.extend(e.offset for e in TemplateBuild.connect(
        handle.build_id, **sdk.acme).logs(offset=500, follow=True)))
    follower.start()
    early = handle.get_status(offset=HUGE_OFFSET)
    assert early.entries == [] and early.next_offset == HUGE_OFFSET
    assert list(handle.logs(offset=HUGE_OFFSET)) == []
    mid = handle.get_status(offset=0).next_offset
    followed = list(handle.logs(offset=mid, follow=True))
    assert followed[0].offset == mid and followed[-1].kind.value == "end"
    follower.join(30)
    assert not follower.is_alive() and beyond == []
    assert list(handle.logs(offset=HUGE_OFFSET, follow=True)) == []  # terminal: replay (nothing) and close
    assert handle.get_status(offset=HUGE_OFFSET).entries == []
    with httpx.Client(base_url=sdk.server.url, headers={"Authorization": f"Bearer {sdk.acme_key}"}) as client:
        for path in (f"/v1/templates/builds/{handle.build_id}", f"/v1/templates/builds/{handle.build_id}/logs"):
            assert client.get(path, params={"offset": str(10**30)}).status_code == 200
    b = handle
    assert b.created_at is not None and b.started_at is not None and b.finished_at is not None
    assert b.created_at <= b.started_at <= b.finished_at <= b.updated_at
    handle.close()


def test_cancel_queued_retry_and_cancel_after_ready(sdk: Sdk) -> None:
    """With one worker busy, a second build waits; cancelling it records the reason without ever starting it; its
    retry is a new attempt of the same inputs that builds; cancelling a finished build changes nothing."""
    name = unique("queued")
    busy = Template.build_in_background(Template.from_image(sdk.base_image).run_cmd(f"sleep 300 # {name}"),
                                        unique("busy"), **sdk.acme)
    queued = Template.build_in_background(Template.from_image(sdk.base_image).run_cmd(f"echo {name} > /q"),
                                          f"{name}:v1", **sdk.acme)
    cancelled = queued.cancel(reason="not now")
    assert cancelled.build.status.value == "cancelled" and cancelled.build.cancellation_reason == "not now"
    assert cancelled.build.started_at is None
    assert [e.kind.value for e in cancelled.entries] == ["start", "cancelled"]
    assert busy.cancel().build.status.value == "cancelled"
    retried = queued.retry()
    assert retried.build_id != queued.build_id and retried.retry_of_build_id == queued.build_id
    assert retried.original_build_id == queued.build_id and retried.tags == ["v1"]
    retried.wait_until_terminal(poll_interval=0.2)
    assert retried.status.value == "ready"
    after = retried.cancel(reason="too late")
    assert after.build.status.value == "ready" and after.build.cancellation_reason is None
    tags = cast(list[TemplateTagInfo], Template.get_tags(name, **sdk.acme))
    assert {t.tag: t.build_id for t in tags} == {"v1": retried.build_id}
    history = Template.list_builds(name, **sdk.acme).builds
    assert [(b.build_id, b.status.value) for b in history] == [(retried.build_id, "ready"),
                                                                (queued.build_id, "cancelled")]
    # A later attempt that reuses the cached step, then fails: its record still shows what it reused.
    failing = Template.from_image(sdk.base_image).run_cmd(f"echo {name} > /q").run_cmd("echo broken; exit 3")
    with pytest.raises(BuildError) as failed:
        Template.build(failing, f"{name}:v1", **sdk.acme)
    assert failed.value.phase is not None and failed.value.phase.value == "build_step"
    assert failed.value.step_index == 2 and "broken" in str(failed.value)
    record = Template.list_builds(name, status="error", **sdk.acme).builds[0]
    assert record.cache_summary is not None and record.cache_summary.layer_hits >= 1
    assert TemplateBuild.connect(record.build_id, **sdk.acme).cache_summary == record.cache_summary
    assert {t.tag: t.build_id for t in cast(list[TemplateTagInfo], Template.get_tags(name, **sdk.acme))} == {
        "v1": retried.build_id}  # the failure moved no tag
    for h in (busy, queued, retried):
        h.close()


def test_missing_template_in_a_known_namespace(sdk: Sdk) -> None:
    """``from_template("acme/missing:stable")`` is a template ref (acme is a namespace here), not a Docker Hub
    image: the build is refused up front naming the template, as for any other unknown template base, with the
    same answer whether the namespace exists or not (and how to name the Docker Hub image instead)."""
    answers = []
    for ref in ("acme/does-not-exist:stable", "zzunknownns/does-not-exist:stable"):
        with pytest.raises(MachineError) as refused:
            Template.build(Template.from_template(ref), unique("orphan"), **sdk.acme)
        message = str(refused.value)
        assert refused.value.code == "invalid_request" and f"template {ref!r} not found" in message, message
        assert f"written docker.io/{ref}" in message, message  # a hint, never a pull: nothing reached a registry
        answers.append(message.replace(ref, "REF"))
    assert answers[0] == answers[1], answers
