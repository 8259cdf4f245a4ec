"""CreateTemplateRequest parsing and the request rules, checked against what nullspace-sdk 1.0.3 really sends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from nullspace import Template
from nullspace.template import _build_inspection_payload, wait_for_port, wait_for_url

from amber.contract.errors import InvalidRequest
from amber.contract.request import parse_create_request, persistable_request, structural_problems
from amber.contract.steps import CopyItemsStep, CopyStep, RunStep, SkipCacheStep
from amber.contract.validation import request_from_definition, request_problems, validate_create_request


def sdk_payload(builder: Template, **kw: Any) -> dict[str, Any]:
    """The exact JSON the SDK sends to plan/validate (inline context, generated-model round trip)."""
    args: dict[str, Any] = {
        "name": "demo",
        "tags": None,
        "cpu_count": 2,
        "memory_mb": 512,
        "internet_access": True,
        "build_backend": None,
        "build_secrets": None,
        "skip_cache": False,
    }
    args.update(kw)
    payload = _build_inspection_payload(builder, None, **args)
    decoded: dict[str, Any] = json.loads(json.dumps(payload))
    return decoded


def every_step_builder(tmp_path: Path) -> Template:
    (tmp_path / "app.py").write_text("print('hi')\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.txt").write_text("a\n")
    builder = (
        Template.from_image("127.0.0.1:5000/busybox:latest")
        .set_file_context(str(tmp_path))
        .apt_install(["curl"])
        .pip_install("uvicorn", g=False)
        .npm_install("left-pad", g=True)
        .bun_install("zod")
        .run_cmd(["echo one", "echo two"], user="app")
        .skip_cache()
        .copy("app.py", "/srv/app.py", user="app", mode=0o755, force_upload=True)
        .copy_items([("pkg", "/srv/pkg"), {"src": ["app.py", "pkg/a.txt"], "dst": "/srv/x/", "mode": "644"}])
        .git_clone("https://example.invalid/repo.git", branch="main", depth=1)
        .set_workdir("/srv")
        .set_user("app")
        .remove("/tmp/x", recursive=True, force=True)
    )
    builder = cast(Template, builder.rename("/srv/a", "/srv/b", force=True))
    return (
        builder.make_dir("/srv/data", mode=0o700)
        .make_symlink("/srv/b", "/srv/link")
        .set_build_envs({"PIP_INDEX_URL": "http://127.0.0.1:1/simple"})
        .set_runtime_envs({"LOG_LEVEL": "info"})
        .set_start_cmd("python3 /srv/app.py", wait_for_port(9000))
    )


def test_sdk_payload_with_every_step_kind_is_accepted(tmp_path: Path) -> None:
    payload = sdk_payload(every_step_builder(tmp_path), skip_cache=True)
    req = validate_create_request(payload)
    actions = [s.action for s in req.step_list]
    assert actions == [
        "apt_install", "pip_install", "npm_install", "bun_install", "run", "run", "skip_cache", "copy",
        "copy_items", "git_clone", "workdir", "user", "remove", "rename", "make_dir", "make_symlink",
    ]  # fmt: skip
    copy = req.step_list[7]
    assert isinstance(copy, CopyStep) and copy.mode == "0755" and copy.force_upload is True
    assert isinstance(req.step_list[8], CopyItemsStep) and len(req.step_list[8].items) == 2
    assert isinstance(req.step_list[4], RunStep) and req.step_list[4].user == "app"
    assert isinstance(req.step_list[6], SkipCacheStep)
    assert req.runtime_config is not None and req.runtime_config.readiness is not None
    assert req.runtime_config.readiness.kind == "tcp"
    assert req.runtime_config.default_user == "app" and req.runtime_config.default_workdir == "/srv"
    assert req.effective_tags == ["default"] and req.effective_backend == "native" and req.skip_cache is True


def test_sdk_http_readiness_and_auth_variants_are_accepted() -> None:
    b = Template.from_image("127.0.0.1:5000/app:1", username="u", password="p").set_start_cmd(
        "httpd", wait_for_url("http://127.0.0.1:8080/health")
    )
    req = validate_create_request(sdk_payload(b, tags=["stable", "v1"]))
    assert req.base_image_auth is not None and req.base_image_auth.kind == "basic"
    assert req.effective_tags == ["stable", "v1"]
    gcp = Template.from_gcp_registry("europe-docker.pkg.dev/p/r/i:1", service_account_json={"type": "service_account"})
    assert validate_create_request(sdk_payload(gcp)).base_image_auth is not None
    aws = Template.from_aws_registry(
        "1.dkr.ecr.us-east-1.amazonaws.com/i:1", access_key_id="AKIA", secret_access_key="secret", region="us-east-1"
    )
    assert validate_create_request(sdk_payload(aws)).base_image_auth is not None


def test_dockerfile_payload_defaults_to_buildkit_and_takes_secrets() -> None:
    b = Template.from_dockerfile_content("FROM 127.0.0.1:5000/busybox:latest\nRUN true\n")
    payload = sdk_payload(b, build_secrets=[{"id": "npm.token", "value": "s3cr3t"}])
    req = validate_create_request(payload)
    assert req.effective_backend == "buildkit"
    stored = json.dumps(persistable_request(req))
    assert "s3cr3t" not in stored and "npm.token" in stored
    assert "s3cr3t" not in repr(req)


def test_empty_steps_with_base_image_is_a_plain_declarative_request() -> None:
    req = validate_create_request({"base_image": "127.0.0.1:5000/busybox:latest", "steps": [], "start_cmd": "sleep 9"})
    assert req.step_list == []


def test_unknown_keys_kept_on_open_models_and_dropped_on_closed_ones() -> None:
    req = parse_create_request(
        {"base_image": "x:1", "future": 1, "steps": [{"action": "run", "command": "true", "zzz": 2}]}
    )
    assert req.model_extra == {"future": 1}
    assert "zzz" not in req.step_list[0].model_dump()


def test_unknown_keys_are_never_part_of_the_stored_definition() -> None:
    """Issue 12: the contract ignores unknown request keys, so the stored definition holds declared fields only,
    at every depth (a 50 MiB unknown field once grew the database by 316 MB)."""
    req = parse_create_request({
        "base_image": "x:1", "future": "x" * 1000, "build_config": {"vcpus": 1, "zz": [1, 2]},
        "runtime_config": {"readiness": {"kind": "tcp", "port": 80, "qq": {}}, "xx": 3},
        "steps": [{"action": "run", "command": "true", "zzz": 2}],
        "build_context": {"files": [{"path": "a", "entry_type": "file", "blob_id": "b", "extra": 1}], "more": 1},
        "build_envs": {"ANY_NAME": "a build-only value"},
    })
    assert persistable_request(req) == {
        "base_image": "x:1", "build_config": {"vcpus": 1},
        "runtime_config": {"readiness": {"kind": "tcp", "port": 80}},
        "steps": [{"action": "run", "command": "true"}],
        "build_context": {"files": [{"path": "a", "entry_type": "file", "blob_id": "b"}]},
        "build_envs": {"ANY_NAME": ""},  # a map's keys are data, kept; its values are build-only, never stored
    }


def problem(data: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        validate_create_request(data)
    return info.value


BASE = {"base_image": "127.0.0.1:5000/busybox:latest"}


@pytest.mark.parametrize(
    ("data", "field", "needle"),
    [
        ({}, "base_image", "source is required"),
        ({**BASE, "dockerfile": "FROM x"}, "base_image", "not both"),
        ({**BASE, "tags": []}, "tags", "must not be empty"),
        ({**BASE, "tags": ["ok", "bad tag"]}, "tags[1]", "not a valid tag"),
        ({**BASE, "tags": ["tb_123"]}, "tags[0]", "exact builds"),
        ({**BASE, "name": "team/x"}, "name", "single segment"),
        ({**BASE, "name": "x:y"}, "name", "single segment"),
        ({"dockerfile": "FROM x", "build_backend": "native"}, "build_backend", "cannot build a dockerfile"),
        ({**BASE, "build_secrets": [{"id": "a", "value": "v"}]}, "build_secrets", "native builds"),
        ({**BASE, "build_args": {"A": "1"}}, "build_args", "BuildKit"),
        ({"dockerfile": "FROM x", "steps": [{"action": "run", "command": "true"}]}, "steps", "need base_image"),
        ({**BASE, "steps": [{"action": "frobnicate"}]}, "steps[0]", "frobnicate"),
        ({**BASE, "steps": [{"action": "run"}]}, "steps[0].command", "required"),
        ({**BASE, "steps": [{"action": "run", "command": "  "}]}, "steps[0].command", "empty"),
        ({**BASE, "steps": [{"action": "apt_install", "packages": []}]}, "steps[0].packages", "at least one"),
        ({**BASE, "steps": [{"action": "make_dir", "path": "/a", "mode": "999"}]}, "steps[0].mode", "octal"),
        ({**BASE, "steps": [{"action": "git_clone", "url": "u", "depth": 0}]}, "steps[0].depth", "at least 1"),
        (
            {**BASE, "steps": [{"action": "copy", "sources": ["nope/a"], "dst": "/a"}]},
            "steps[0].sources[0]",
            "not in build_context",
        ),
        (
            {**BASE, "steps": [{"action": "copy", "sources": ["../a"], "dst": "/a"}]},
            "steps[0].sources[0]",
            "'..'",
        ),
        (
            {**BASE, "build_context": {"files": [{"path": "/abs", "entry_type": "dir"}]}},
            "build_context.files[0].path",
            "relative",
        ),
        (
            {**BASE, "build_context": {"files": [{"path": "a", "entry_type": "file", "_local_path": "/x"}]}},
            "build_context.files[0]",
            "exactly one of content_base64 or blob_id",
        ),
        (
            {**BASE, "build_context": {"files": [{"path": "a", "entry_type": "file", "content_base64": "!!"}]}},
            "build_context.files[0].content_base64",
            "base64",
        ),
        ({**BASE, "build_config": {"vcpus": 0}}, "build_config.vcpus", "between"),
        ({**BASE, "build_config": {"vcpus": "2"}}, "build_config.vcpus", "integer"),
        ({**BASE, "build_config": {"memory_mib": True}}, "build_config.memory_mib", "integer"),
        ({**BASE, "build_envs": {"1BAD": "x"}}, "build_envs.1BAD", "environment variable name"),
        (
            {**BASE, "runtime_config": {"readiness": {"kind": "tcp", "port": 0}}},
            "runtime_config.readiness.port",
            "port",
        ),
        (
            {**BASE, "runtime_config": {"readiness": {"kind": "http", "port": 80, "path": "x"}}},
            "runtime_config.readiness.path",
            "absolute",
        ),
        (
            {**BASE, "runtime_config": {"readiness": {"kind": "carrier-pigeon"}}},
            "runtime_config.readiness",
            "carrier-pigeon",
        ),
        ({**BASE, "runtime_config": {"default_workdir": "rel"}}, "runtime_config.default_workdir", "absolute"),
        (
            {**BASE, "base_image_auth": {"kind": "basic", "username": "u", "password": ""}},
            "base_image_auth.password",
            "empty",
        ),
        (
            {
                **BASE,
                "registry_auth": [{"registry": "ghcr.io", "auth": {"kind": "basic", "username": "u", "password": "p"}}],
            },
            "registry_auth[0].registry",
            "not a registry this build pulls from",
        ),
        ({**BASE, "base_image": "has space"}, "base_image", "not an image"),
        ({**BASE, "skip_cache": "yes"}, "skip_cache", "boolean"),
    ],
)
def test_rule_violations_name_the_field(data: dict[str, Any], field: str, needle: str) -> None:
    err = problem(data)
    assert err.field == field, str(err)
    assert needle in err.message, str(err)


def test_credentials_never_appear_in_errors() -> None:
    err = problem(
        {
            **BASE,
            "base_image_auth": {
                "kind": "aws_ecr",
                "access_key_id": "AK",
                "secret_access_key": "TOPSECRET",
                "region": "nowhere",
            },
        }
    )
    assert err.field == "base_image_auth.region"
    assert "TOPSECRET" not in str(err)


def test_structural_problems_reports_all_errors() -> None:
    problems = structural_problems({"base_image": 1, "tags": "x", "steps": [{"action": "run"}]})
    assert {p.field for p in problems} == {"base_image", "tags", "steps[0].command"}


def test_registry_auth_for_the_dockerfile_from_host_is_accepted() -> None:
    req = parse_create_request(
        {
            "dockerfile": "FROM 127.0.0.1:5000/base:1 AS b\nFROM b\n",
            "registry_auth": [
                {"registry": "127.0.0.1:5000", "auth": {"kind": "basic", "username": "u", "password": "p"}}
            ],
        }
    )
    assert request_problems(req) == []


def test_request_from_definition_takes_fresh_credentials() -> None:
    original = validate_create_request(
        {**BASE, "base_image_auth": {"kind": "basic", "username": "u", "password": "old-secret"}}
    )
    stored = persistable_request(original)
    assert stored["base_image_auth"] == {"kind": "basic"} and "old-secret" not in json.dumps(stored)
    with pytest.raises(InvalidRequest):
        validate_create_request(stored)  # a stub is not a credential
    fresh = request_from_definition(stored, base_image_auth={"kind": "basic", "username": "u", "password": "new"})
    assert fresh.base_image_auth is not None and fresh.base_image_auth.kind == "basic"
    again = request_from_definition(stored, base_image_auth=fresh.base_image_auth)
    assert again.base_image_auth == fresh.base_image_auth
    assert request_from_definition(stored).base_image_auth is None
