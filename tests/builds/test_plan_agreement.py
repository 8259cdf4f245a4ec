"""``/plan`` and the executed build agree on the runtime defaults: default user, workdir and readiness.

Pure, no VM. The plan side is what ``POST /v1/templates/plan`` answers (``plan_json`` with the service's resolution
of the template base). The build side is what the pipeline records for the same plan over the base it boots:
``Chain.over`` (its runtime becomes ``BuildArtifact.runtime_defaults`` and ``amber-artifact.json``), over the
image config as each base phase reads it — ``image_defaults`` of an OCI image's or BuildKit's config, the parent
template's ``amber-artifact.json`` through ``read_artifact_metadata``. For every step kind and for readiness
derived from a HEALTHCHECK: where the plan states a value, the build has that value; where the plan can know the
image (a template base, a Dockerfile's final stage), it states every value the build gets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from amber.builds.artifact_metadata import ArtifactMetadata, read_artifact_metadata, write_artifact_metadata
from amber.builds.pipeline.attempt import BaseImage, Chain
from amber.builds.planning import BaseTemplate, PlanInputs, make_plan, plan_json
from amber.builds.planning.runtime import ImageDefaults, image_defaults, inherited_defaults, runtime_from_json
from amber.contract.steps import STEP_ACTIONS
from amber.contract.validation import validate_create_request
from amber.oci.config import ImageConfig

BASE = "127.0.0.1:5000/busybox:latest"
FIELDS = ("default_user", "default_workdir", "readiness")
HEALTHCHECK = {"Test": ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/"], "Interval": 1_000_000_000,
               "Timeout": 2_000_000_000, "Retries": 4}  # fmt: skip

STEP_EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "apt_install": [{"action": "apt_install", "packages": ["curl"]}],
    "pip_install": [{"action": "pip_install", "packages": ["uvicorn"], "g": False}],
    "npm_install": [{"action": "npm_install", "packages": ["left-pad"], "g": True}],
    "bun_install": [{"action": "bun_install", "packages": ["zod"]}],
    "run": [{"action": "run", "command": "echo hi", "user": "app"}],
    "workdir": [{"action": "workdir", "path": "/srv"}, {"action": "workdir", "path": "app"}],
    "user": [{"action": "user", "user": "app"}],
    "copy": [{"action": "copy", "sources": ["a.txt"], "dst": "/srv/a.txt", "user": "app", "mode": "0640"}],
    "copy_items": [{"action": "copy_items", "items": [{"sources": ["a.txt"], "dst": "rel/"}]}],
    "remove": [{"action": "remove", "path": "/tmp/x", "recursive": True, "force": True}],
    "rename": [{"action": "rename", "src": "/a", "dst": "/b", "force": False}],
    "make_dir": [{"action": "make_dir", "path": "/srv/data", "mode": "0700"}],
    "make_symlink": [{"action": "make_symlink", "target": "/srv", "path": "/s"}],
    "git_clone": [{"action": "git_clone", "url": "https://example.invalid/r.git", "path": "src", "depth": 1}],
    "skip_cache": [{"action": "skip_cache"}],
}
CONTEXT = {"files": [{"path": "a.txt", "entry_type": "file", "content_base64": "YQ=="}]}

# Image configs as a registry serves them: nothing set, USER and WORKDIR, and a HEALTHCHECK.
IMAGES: dict[str, dict[str, Any]] = {
    "bare": {},
    "user_workdir": {"User": "nobody", "WorkingDir": "/img"},
    "healthcheck": {"User": "daemon", "WorkingDir": "/opt", "Healthcheck": HEALTHCHECK},
}


def _config(config: dict[str, Any]) -> ImageConfig:
    return ImageConfig.from_json(json.dumps({"architecture": "amd64", "os": "linux", "config": config}))


def _request(steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"base_image": BASE, "steps": steps, "build_context": CONTEXT, "start_cmd": "exec httpd -f -p 8080",
            **extra}  # fmt: skip


def _built(data: dict[str, Any], image: ImageDefaults, base: BaseTemplate | None = None) -> dict[str, Any]:
    """The runtime defaults the pipeline records for ``data`` over a base whose image config is ``image``."""
    plan = make_plan(validate_create_request(data), base)
    return Chain.over(plan, BaseImage((), image, "sha256:" + "0" * 64), "guest").runtime.to_json()


def _planned(data: dict[str, Any], base: BaseTemplate | None = None) -> dict[str, Any]:
    """What ``POST /v1/templates/plan`` answers (the service resolves the template base the same way)."""
    plan: dict[str, Any] = plan_json(data, resolve=lambda _req: PlanInputs(base))["build_plan"]
    return plan


def _agree(planned: dict[str, Any], built: dict[str, Any], *, complete: bool) -> None:
    for name in FIELDS:
        if complete:
            assert planned.get(name) == built.get(name), (name, planned, built)
        elif planned.get(name) is not None:
            assert planned[name] == built[name], (name, planned, built)
    assert built["default_user"] and built["default_workdir"]  # an executed build always knows them


def test_every_step_kind_is_covered() -> None:
    assert set(STEP_EXAMPLES) == set(STEP_ACTIONS)


@pytest.mark.parametrize("action", STEP_ACTIONS)
@pytest.mark.parametrize("image", sorted(IMAGES))
def test_plan_of_an_oci_base_states_only_what_the_build_does(action: str, image: str) -> None:
    """An OCI image's config is known only when the build resolves it: the plan states what the request and its
    steps decide, and the build agrees; the rest (the image's USER, a HEALTHCHECK) the plan leaves out."""
    for data in (_request(STEP_EXAMPLES[action]),
                 _request(STEP_EXAMPLES[action], runtime_config={"default_user": "svc", "default_workdir": "/w"})):
        built = _built(data, image_defaults(_config(IMAGES[image])))
        _agree(_planned(data), built, complete=False)
    if image == "healthcheck":  # the image HEALTHCHECK became the probe of the build
        assert built["readiness"]["kind"] == "command" and built["readiness"]["interval_ms"] == 1000
    planned = _planned(_request(STEP_EXAMPLES[action]))
    if action == "user":
        assert planned["default_user"] == "app"
    if action == "workdir":
        assert planned["default_workdir"] == "/srv/app"  # ``app`` is relative to /srv, known
        assert "default_workdir" not in _planned(_request(STEP_EXAMPLES[action][1:]))  # relative to the image's


@pytest.mark.parametrize("action", STEP_ACTIONS)
@pytest.mark.parametrize("start_cmd", [True, False])
def test_plan_of_a_template_base_states_everything_the_build_does(
    action: str, start_cmd: bool, tmp_path: Path
) -> None:
    """A template base's runtime defaults are known at accept: the plan (from the database's runtime defaults)
    and the build (from the parent's ``amber-artifact.json``) agree on every field, inherited probe included."""
    parent = make_plan(validate_create_request(_request([{"action": "workdir", "path": "/srv"}],
                                                        runtime_config={"default_user": "app"})))  # fmt: skip
    parent_runtime = Chain.over(parent, BaseImage((), image_defaults(_config(IMAGES["healthcheck"])), "sha256:1"),
                                "guest").runtime  # fmt: skip
    write_artifact_metadata(tmp_path, ArtifactMetadata(runtime=parent_runtime))
    stored = parent_runtime.to_json()  # what the artifact row keeps (env keys only)
    base = BaseTemplate("tmpl_parent", "tmpl_parent", stored)
    data: dict[str, Any] = {"base_image": "tmpl_parent", "steps": STEP_EXAMPLES[action], "build_context": CONTEXT}
    if start_cmd:
        data["start_cmd"] = "exec sleep 1000"
    built = _built(data, inherited_defaults(read_artifact_metadata(tmp_path).runtime), base)
    _agree(_planned(data, base), built, complete=True)
    if not start_cmd:  # the parent's HEALTHCHECK-derived probe is inherited with its start command
        assert built["readiness"] == stored["readiness"] and built["readiness"]["kind"] == "command"
    assert runtime_from_json(stored).readiness == parent_runtime.readiness


@pytest.mark.parametrize("build_target", [None, "svc"])
def test_plan_of_a_dockerfile_states_the_healthcheck_readiness_the_build_gets(build_target: str | None) -> None:
    """The final stage's USER, WORKDIR and HEALTHCHECK are in the Dockerfile: the plan maps the HEALTHCHECK to the
    same probe the build maps from the image config BuildKit writes for it."""
    dockerfile = ("FROM 127.0.0.1:5000/busybox:latest AS svc\nUSER daemon\nWORKDIR /srv\nWORKDIR app\n"
                  "HEALTHCHECK --interval=1s --timeout=2s --retries=4 CMD wget -q -O /dev/null http://127.0.0.1:8080/\n"
                  "FROM svc AS extra\nUSER nobody\n")  # fmt: skip
    data: dict[str, Any] = {"dockerfile": dockerfile, "start_cmd": "exec httpd -f -p 8080"}
    if build_target is not None:
        data["build_target"] = build_target
    user = "daemon" if build_target == "svc" else "nobody"
    built = _built(data, image_defaults(_config({"User": user, "WorkingDir": "/srv/app", "Healthcheck": HEALTHCHECK})))
    planned = _planned(data)
    _agree(planned, built, complete=True)
    assert planned["readiness"]["kind"] == "command" and planned["readiness"]["interval_ms"] == 1000
    assert planned["default_user"] == user and planned["default_workdir"] == "/srv/app"
