"""Pure planning: Dockerfile rendering (against the SDK's own renderer), plan/validate responses (parsed by the
SDK's own parsers), source classification, digests, cache keys and decisions, runtime defaults."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nullspace.template import (
    TemplateStep,
    _steps_to_dockerfile,
    _template_build_plan_response_from_payload,
    _template_build_validation_response_from_payload,
)

from amber.builds.planning import BaseTemplate, BuildPlan, make_plan, plan_json, plan_request, validate_request
from amber.builds.planning.cache import (
    base_layer_key,
    copied_entries,
    dockerfile_base_key,
    final_artifact_key,
    step_key,
)
from amber.builds.planning.digests import content_digest, context_manifest
from amber.builds.planning.runtime import ImageDefaults, map_healthcheck
from amber.builds.planning.source import resolve_source
from amber.builds.planning.steps import (
    CopyOp,
    ShellOp,
    copy_destination,
    plan_steps,
    render_dockerfile,
    resolve_workdir,
)
from amber.contract.logs import CacheReason
from amber.contract.request import parse_create_request
from amber.contract.sources import BuildContextFile
from amber.contract.template_refs import classify_base_ref
from amber.contract.validation import validate_create_request
from tests.builds.test_request_schema import every_step_builder, sdk_payload

BASE = "127.0.0.1:5000/busybox:latest"


def test_rendered_dockerfile_matches_the_sdk_reference_renderer(tmp_path: Path) -> None:
    payload = sdk_payload(every_step_builder(tmp_path))
    req = validate_create_request(payload)
    ours = render_dockerfile(BASE, plan_steps(req.step_list), req.build_envs or {}, req.start_cmd)
    sdk_steps = [TemplateStep(s["action"], {k: v for k, v in s.items() if k != "action"}) for s in payload["steps"]]
    theirs = _steps_to_dockerfile(BASE, sdk_steps, payload["build_envs"], payload["start_cmd"])
    assert ours == theirs
    assert 'RUN su -s /bin/sh -c "echo one" "app"' in ours
    assert "COPY --chown=app --chmod=0755 builder-context/step-7/src-0/app.py /srv/app.py" in ours


def test_plan_response_parses_with_the_sdk_and_shows_the_dockerfile(tmp_path: Path) -> None:
    payload = sdk_payload(every_step_builder(tmp_path))
    body = plan_json(payload)
    parsed = _template_build_plan_response_from_payload(body)
    assert parsed.build_backend.value == "native" and parsed.source_type.value == "declarative"
    assert parsed.requires_base_image_auth is False
    assert parsed.dockerfile_digest is not None and parsed.dockerfile_digest.startswith("sha256:")
    assert parsed.context_manifest is not None and parsed.context_manifest.file_count == 4
    plan = body["build_plan"]
    assert plan["base_template"] == BASE
    assert plan["dockerfile"].startswith(f"FROM {BASE}\nRUN apt-get update")
    assert plan["run_steps"][0].startswith("apt-get update && apt-get install -y curl")
    assert plan["readiness"] == {
        "kind": "tcp",
        "port": 9000,
        "timeout_secs": 30,
        "interval_ms": 500,
        "startup_grace_secs": 2,
    }
    assert plan["default_user"] == "app" and plan["default_workdir"] == "/srv"
    assert plan["env_assignments"] == [["PIP_INDEX_URL", "http://127.0.0.1:1/simple"]]
    assert {next(iter(item)) for item in plan["build_steps"]} >= {"Run", "Copy", "Workdir", "User", "SkipCache"}
    assert "steps: steps from the first skip_cache step on are rebuilt on every build" in body["warnings"]
    # Identical requests plan identically (digests are deterministic).
    assert plan_json(payload) == body


def test_plan_of_a_dockerfile_request() -> None:
    text = f'FROM {BASE} AS base\nENV A=1 B="x y"\nRUN echo hi\nMAINTAINER me\nCOPY a /a\nFROM base\nRUN true\n'
    body = plan_json(
        {
            "dockerfile": text,
            "build_context": {
                "files": [{"path": "a", "entry_type": "file", "content_base64": base64.b64encode(b"a").decode()}]
            },
        }
    )
    parsed = _template_build_plan_response_from_payload(body)
    assert parsed.build_backend.value == "buildkit" and parsed.source_type.value == "dockerfile"
    plan = body["build_plan"]
    assert plan["base_template"] == "base"
    assert plan["run_steps"] == ["echo hi", "true"]
    assert plan["env_assignments"] == [["A", "1"], ["B", "x y"]]
    assert plan["ignored_instructions"] == ["MAINTAINER me"]
    assert plan["ignored_instruction_warnings"] == [{"instruction": "MAINTAINER me", "line": 4}]


def test_validate_reports_problems_as_data_and_the_sdk_parses_it() -> None:
    bad = validate_request({"base_image": BASE, "tags": [], "steps": [{"action": "run"}]}).to_json()
    parsed = _template_build_validation_response_from_payload(bad)
    assert parsed.valid is False
    assert [e.code for e in parsed.errors] == ["invalid_request"]
    assert "steps[0].command" in parsed.errors[0].message
    bad2 = validate_request({"base_image": BASE, "tags": []}).to_json()
    assert bad2["errors"][0]["field"] == "tags"
    broken = validate_request({"dockerfile": "RUN true\n"}).to_json()
    assert broken["valid"] is False and "no FROM" in broken["errors"][0]["message"]
    good = _template_build_validation_response_from_payload(validate_request({"base_image": BASE}).to_json())
    assert good.valid is True and good.errors == []


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        ("tmpl_abc", "template"),
        ("nullspace/base:latest", "template"),
        ("web:tb_123", "template"),
        ("ubuntu:22.04", "oci"),
        ("127.0.0.1:5000/team/busybox:latest", "oci"),
        ("localhost/x", "oci"),
        ("ghcr.io/a/b", "oci"),
        ("acme/python-dev:stable", "ambiguous"),
        ("library/ubuntu", "ambiguous"),
        ("a/b/c", "oci"),
    ],
)
def test_base_ref_classification(ref: str, kind: str) -> None:
    assert classify_base_ref(ref) == kind


def test_source_resolution() -> None:
    oci = parse_create_request({"base_image": BASE, "steps": []})
    assert resolve_source(oci).source_type == "oci_import"
    decl = parse_create_request({"base_image": BASE, "steps": [{"action": "run", "command": "true"}]})
    assert (resolve_source(decl).source_type, resolve_source(decl).backend) == ("declarative", "native")
    amb = parse_create_request({"base_image": "acme/app:1"})
    assert resolve_source(amb).source_type == "oci_import"
    assert resolve_source(amb, base_is_template=True).source_type == "template_base"
    bk = parse_create_request(
        {"base_image": BASE, "build_backend": "buildkit", "steps": [{"action": "run", "command": "x"}]}
    )
    assert resolve_source(bk).backend == "buildkit"


# --- cache keys -------------------------------------------------------------------------------------------------

DIGEST = "sha256:" + "a" * 64


def test_base_key_needs_a_manifest_digest() -> None:
    with pytest.raises(ValueError, match="manifest digest"):
        base_layer_key("busybox:latest", disk_mb=None, guest_fingerprint="g")
    assert base_layer_key(DIGEST, disk_mb=None, guest_fingerprint="g") != base_layer_key(
        "sha256:" + "b" * 64, disk_mb=None, guest_fingerprint="g"
    )


def test_dockerfile_base_key_is_the_built_image_id_disk_and_guest() -> None:
    with pytest.raises(ValueError, match="image ID"):
        dockerfile_base_key("amber-build:latest", disk_mb=None, guest_fingerprint="g")
    key = dockerfile_base_key(DIGEST, disk_mb=None, guest_fingerprint="g")
    assert key == dockerfile_base_key(DIGEST, disk_mb=None, guest_fingerprint="g")
    assert key != base_layer_key(DIGEST, disk_mb=None, guest_fingerprint="g")  # never an OCI import's disk
    assert key != dockerfile_base_key("sha256:" + "b" * 64, disk_mb=None, guest_fingerprint="g")
    assert key != dockerfile_base_key(DIGEST, disk_mb=2048, guest_fingerprint="g")
    assert key != dockerfile_base_key(DIGEST, disk_mb=None, guest_fingerprint="other-kernel")


def _keys(steps: list[dict[str, Any]], envs: dict[str, str], files: list[dict[str, Any]] | None = None) -> list[str]:
    req = validate_create_request(
        {"base_image": BASE, "steps": steps, "build_envs": envs, "build_context": {"files": files or []}}
    )
    parent = base_layer_key(DIGEST, disk_mb=None, guest_fingerprint="g")
    ctx = req.build_context.files if req.build_context else []
    keys = []
    for plan in plan_steps(req.step_list):
        parent = step_key(parent, plan, copied_entries(plan, ctx, content_digest), envs)
        keys.append(parent)
    return keys


commands = st.lists(st.text(alphabet="abcdefgh ;&|", min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=5)
env_maps = st.dictionaries(
    st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True), st.text(alphabet="xyz= 1", max_size=5), max_size=3
)


@settings(max_examples=60, deadline=None)
@given(commands, env_maps, st.data())
def test_step_keys_chain(cmds: list[str], envs: dict[str, str], data: st.DataObject) -> None:
    steps = [{"action": "run", "command": c} for c in cmds]
    keys = _keys(steps, envs)
    assert len(set(keys)) == len(keys)  # every position has its own key
    assert keys == _keys(steps, dict(reversed(list(envs.items()))))  # env order is irrelevant
    i = data.draw(st.integers(0, len(cmds) - 1))
    changed = [*steps[:i], {"action": "run", "command": cmds[i] + " x"}, *steps[i + 1 :]]
    other = _keys(changed, envs)
    assert other[:i] == keys[:i]  # steps before the change keep their keys
    assert all(a != b for a, b in zip(other[i:], keys[i:], strict=True))  # the change and all after it move
    assert _keys(steps, {**envs, "ZZ_NEW": "1"}) != keys  # build envs are part of every step key


def _file(path: str, content: bytes) -> dict[str, Any]:
    return {"path": path, "entry_type": "file", "content_base64": base64.b64encode(content).decode(), "mode": "0644"}


def test_copy_step_key_follows_file_content_only_for_copied_files() -> None:
    steps: list[dict[str, Any]] = [
        {"action": "copy", "sources": ["d"], "dst": "/d"},
        {"action": "run", "command": "true"},
    ]
    a = _keys(steps, {}, [{"path": "d", "entry_type": "dir"}, _file("d/x", b"1"), _file("other", b"1")])
    b = _keys(steps, {}, [{"path": "d", "entry_type": "dir"}, _file("d/x", b"2"), _file("other", b"1")])
    c = _keys(steps, {}, [{"path": "d", "entry_type": "dir"}, _file("d/x", b"1"), _file("other", b"2")])
    d = _keys(steps, {}, [_file("other", b"1"), _file("d/x", b"1"), {"path": "d", "entry_type": "dir"}])
    assert a[0] != b[0] and a[1] != b[1]
    assert a == c == d


def test_cache_decisions_follow_skip_cache_and_force_upload() -> None:
    run = {"action": "run", "command": "true"}
    req = parse_create_request({"base_image": BASE, "steps": [run, {"action": "skip_cache"}, run, run]})
    base, steps, final = make_plan(req).cache_decisions()
    assert base.lookup and steps[0].lookup
    assert [d.reason for d in steps[1:]] == [CacheReason.BUILDER_CACHE_BOUNDARY] * 3
    assert final.reason == CacheReason.BUILDER_CACHE_BOUNDARY

    whole = parse_create_request({"base_image": BASE, "steps": [run], "skip_cache": True})
    base, steps, final = make_plan(whole).cache_decisions()
    assert base.reason == steps[0].reason == CacheReason.WHOLE_BUILD_SKIP_CACHE
    assert final.reason == CacheReason.WHOLE_BUILD_SKIP_CACHE

    forced = parse_create_request(
        {
            "base_image": BASE,
            "steps": [run, {"action": "copy", "sources": ["a"], "dst": "/a", "force_upload": True}, run],
        }
    )
    _, steps, _ = make_plan(forced).cache_decisions()
    assert [d.reason for d in steps] == [None, CacheReason.FORCE_UPLOAD, CacheReason.BUILDER_CACHE_BOUNDARY]

    plain = parse_create_request({"base_image": BASE, "steps": [run, run]})
    _, steps, final = make_plan(plain).cache_decisions()
    assert all(d.lookup for d in steps) and final.lookup


def test_final_key_covers_start_command_readiness_and_runtime() -> None:
    def key(extra: dict[str, Any], **vm: Any) -> str:
        req = parse_create_request({"base_image": BASE, "start_cmd": "httpd", **extra})
        rt = make_plan(req).runtime_defaults(ImageDefaults())
        shape = {"vcpus": 1, "memory_mib": 512, "disk_mb": None, "internet_access": True} | vm
        return final_artifact_key("L", rt, guest_fingerprint="g", **shape)

    k = key({})
    assert k == key({})
    assert k != key({"start_cmd": "httpd -f"})
    assert k != key({"runtime_config": {"readiness": {"kind": "tcp", "port": 80}}})
    assert k != key({"runtime_config": {"default_envs": {"A": "1"}}})
    assert k != key({"runtime_config": {"default_user": "app"}})
    assert k != key({}, memory_mib=1024)


# --- runtime defaults -------------------------------------------------------------------------------------------


def test_runtime_defaults_precedence_and_env_keys_only() -> None:
    image = ImageDefaults(user="daemon", env=(("PATH", "/bin"), ("IMG", "1")), workdir="/img")
    req = parse_create_request(
        {
            "base_image": BASE,
            "steps": [{"action": "workdir", "path": "app"}, {"action": "user", "user": "app"}],
            "build_envs": {"SECRETISH": "x"},
            "start_cmd": "s",
        }
    )
    rt = make_plan(req).runtime_defaults(image)
    assert (rt.user, rt.workdir) == ("app", "/img/app")
    assert "SECRETISH" not in rt.env  # build envs never reach the start command
    js = rt.to_json()
    assert js["default_env_keys"] == ["IMG", "PATH"] and "1" not in str(js["default_env_keys"])
    req2 = parse_create_request(
        {
            "base_image": BASE,
            "runtime_config": {"default_user": "root", "default_workdir": "/w", "default_envs": {"IMG": "2"}},
        }
    )
    rt2 = make_plan(req2).runtime_defaults(image)
    assert (rt2.user, rt2.workdir, rt2.env["IMG"]) == ("root", "/w", "2")
    assert make_plan(parse_create_request({"base_image": BASE})).runtime_defaults(ImageDefaults()).env["PATH"]


def test_image_healthcheck_maps_to_a_command_probe_when_none_is_given() -> None:
    hc = {"Test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/"], "Interval": 2_000_000_000, "Retries": 3}
    probe = map_healthcheck(hc)
    assert probe is not None and probe.kind == "command" and probe.interval_ms == 2000
    assert probe.command == "wget -q -O- http://127.0.0.1:8080/"
    assert map_healthcheck({"Test": ["NONE"]}) is None
    assert map_healthcheck({"Test": ["CMD", "test", "-e", "/a b"]}) is not None
    req = parse_create_request({"base_image": BASE, "start_cmd": "srv"})
    rt = make_plan(req).runtime_defaults(ImageDefaults(healthcheck=hc))
    assert rt.readiness is not None and rt.readiness_from_healthcheck
    given_probe = parse_create_request(
        {"base_image": BASE, "start_cmd": "srv", "runtime_config": {"readiness": {"kind": "timeout", "timeout_ms": 5}}}
    )
    rt2 = make_plan(given_probe).runtime_defaults(ImageDefaults(healthcheck=hc))
    assert rt2.readiness is not None and rt2.readiness.kind == "timeout" and not rt2.readiness_from_healthcheck


def test_steps_become_ops() -> None:
    req = parse_create_request(
        {
            "base_image": BASE,
            "steps": [
                {"action": "run", "command": "id", "user": "app"},
                {
                    "action": "copy_items",
                    "items": [{"sources": ["a"], "dst": "/x/"}, {"sources": ["b", "c"], "dst": "/y/", "mode": 420}],
                },
                {"action": "pip_install", "packages": ["a", "b"], "g": False},
            ],
        }
    )
    plans = plan_steps(req.step_list)
    assert plans[0].ops == (ShellOp("id", "app"),) and plans[0].index == 1
    assert plans[1].ops == (CopyOp(("a",), "/x/"), CopyOp(("b", "c"), "/y/", mode=0o644))
    assert plans[1].lines[1] == 'COPY --chmod=0644 ["b", "c", "/y/"]'
    assert plans[2].ops == (ShellOp("pip install --user --no-cache-dir a b"),)
    assert resolve_workdir("/a", "../b") == "/b" and copy_destination("/w", "x/") == "/w/x/"


def test_context_manifest_is_order_independent() -> None:
    files = [
        BuildContextFile(path="a", entry_type="file", blob_id="sha256-1"),
        BuildContextFile(path="d", entry_type="dir"),
    ]
    assert context_manifest(files, content_digest) == context_manifest(files[::-1], content_digest)
    assert context_manifest(files, content_digest).file_count == 1


def test_plan_request_on_parsed_model_matches_plan_json() -> None:
    data = {"base_image": BASE, "steps": [{"action": "run", "command": "true"}]}
    assert plan_request(validate_create_request(data)).to_json() == plan_json(data)


# --- property: the Dockerfile matches the SDK's reference renderer for any SDK-shaped steps -----------------------

_word = st.text(alphabet=st.characters(categories=("L", "N"), include_characters="-._/:@+="), min_size=1, max_size=12)
_text = st.text(alphabet=st.characters(categories=("L", "N", "Zs", "P", "S"), exclude_characters='"\\'), min_size=1,
                max_size=20).filter(lambda t: t.strip() == t and t.strip())  # fmt: skip
_mode = st.integers(0, 0o7777).map(lambda m: format(m, "04o"))
_pkgs = st.lists(_word, min_size=1, max_size=3)


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


_item = st.builds(lambda srcs, dst, user, mode: _drop_none({"sources": srcs, "dst": dst, "user": user, "mode": mode}),
                  st.lists(_word, min_size=1, max_size=2), _text, _opt(_word), _opt(_mode))  # fmt: skip
_step = st.one_of(
    st.builds(lambda p: {"action": "apt_install", "packages": p}, _pkgs),
    st.builds(lambda p, g: _drop_none({"action": "pip_install", "packages": p, "g": g}), _pkgs, _opt(st.booleans())),
    st.builds(lambda p, g: _drop_none({"action": "npm_install", "packages": p, "g": g}), _pkgs, _opt(st.booleans())),
    st.builds(lambda p, g: _drop_none({"action": "bun_install", "packages": p, "g": g}), _pkgs, _opt(st.booleans())),
    st.builds(lambda c, u: _drop_none({"action": "run", "command": c, "user": u}), _text, _opt(_word)),
    st.builds(lambda p: {"action": "workdir", "path": p}, _text),
    st.builds(lambda u: {"action": "user", "user": u}, _word),
    st.builds(lambda i: {"action": "copy", **i}, _item),
    st.builds(lambda items: {"action": "copy_items", "items": items}, st.lists(_item, min_size=1, max_size=3)),
    st.builds(
        lambda p, r, f: {"action": "remove", "path": p, "recursive": r, "force": f}, _text, st.booleans(), st.booleans()
    ),
    st.builds(lambda a, b, f: {"action": "rename", "src": a, "dst": b, "force": f}, _text, _text, st.booleans()),
    st.builds(lambda p, m: _drop_none({"action": "make_dir", "path": p, "mode": m}), _text, _opt(_mode)),
    st.builds(lambda t, p: {"action": "make_symlink", "target": t, "path": p}, _text, _text),
    st.builds(
        lambda u, p, b, d: _drop_none({"action": "git_clone", "url": u, "path": p, "branch": b, "depth": d}),
        _word,
        _word,
        _opt(_word),
        _opt(st.integers(1, 50)),
    ),
    st.just({"action": "skip_cache"}),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_step, max_size=8),
    st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True), _word, max_size=3),
    _opt(_text),
)
def test_dockerfile_matches_the_sdk_renderer_for_any_steps(
    steps: list[dict[str, Any]], envs: dict[str, str], start_cmd: str | None
) -> None:
    req = parse_create_request({"base_image": BASE, "steps": steps, "build_envs": envs, "start_cmd": start_cmd})
    ours = render_dockerfile(BASE, plan_steps(req.step_list), envs, start_cmd)
    sdk_steps = [TemplateStep(s["action"], {k: v for k, v in s.items() if k != "action"}) for s in steps]
    assert ours == _steps_to_dockerfile(BASE, sdk_steps, envs, start_cmd)


# --- the stored plan ---------------------------------------------------------------------------------------------


def test_a_stored_plan_reads_back_equal_and_holds_no_secret(tmp_path: Path) -> None:
    """The plan stored at accept is the plan the worker executes: it reads back equal, and never carries a
    credential, a secret value or inline context bytes."""
    blob = "blob_" + "7" * 20
    secret_bytes = base64.b64encode(b"inline-bytes-never-stored").decode()
    requests: list[tuple[dict[str, Any], BaseTemplate | None]] = [
        (sdk_payload(every_step_builder(tmp_path)), None),
        ({"dockerfile": f"FROM {BASE} AS a\nRUN --mount=type=secret,id=tok true\nFROM a\nUSER app\n",
          "build_target": "a", "build_args": {"V": "1"}, "dockerfile_path": "Dockerfile", "skip_cache": True,
          "build_secrets": [{"id": "tok", "value": "s3cr3t-value"}],
          "registry_auth": [{"registry": "127.0.0.1:5000",
                             "auth": {"kind": "basic", "username": "u", "password": "pw-never-stored"}}],
          "build_context": {"files": [{"path": "ctx/a", "entry_type": "file", "content_base64": secret_bytes},
                                      {"path": "ctx/b", "entry_type": "file", "blob_id": blob},
                                      {"path": "ctx/d", "entry_type": "dir"}]}}, None),
        ({"base_image": "tmpl_parent", "steps": [{"action": "run", "command": "true"}],
          "base_image_auth": {"kind": "basic", "username": "u", "password": "pw-never-stored"}},
         BaseTemplate("tmpl_parent", "tmpl_parent", {"default_user": "app", "default_workdir": "/srv",
                                                     "default_env_keys": [], "start_cmd": "srv",
                                                     "readiness": {"kind": "tcp", "port": 80}})),
    ]  # fmt: skip
    for data, base in requests:
        plan = make_plan(validate_create_request(data), base, {blob: "sha256:" + "8" * 64})
        stored = json.dumps(plan.to_json())
        assert BuildPlan.from_json(json.loads(stored)) == plan
        for value in ("s3cr3t-value", "pw-never-stored", secret_bytes):
            assert value not in stored
    assert plan.base_kind == "template" and plan.runtime_defaults().start_cmd == "srv"
    with pytest.raises(ValueError, match="format"):
        BuildPlan.from_json({**plan.to_json(), "format": 0})
    with pytest.raises(ValueError, match="does not read back"):
        BuildPlan.from_json({"format": plan.to_json()["format"]})


def test_context_digests_come_from_the_store_and_match_the_bytes() -> None:
    """An uploaded blob is keyed by the digest the store recorded (its bytes are content-addressed): equal to the
    digest of the same bytes sent inline, so the step keys and context digest do not depend on how they came."""
    data = b"same bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    copy = [{"action": "copy", "sources": ["f"], "dst": "/f"}]
    inline = make_plan(validate_create_request({"base_image": BASE, "steps": copy, "build_context": {"files": [
        {"path": "f", "entry_type": "file", "content_base64": base64.b64encode(data).decode()}]}}))
    uploaded = make_plan(validate_create_request({"base_image": BASE, "steps": copy, "build_context": {"files": [
        {"path": "f", "entry_type": "file", "blob_id": "blob_1"}]}}), blob_digests={"blob_1": digest})
    assert inline.step_keys("sha256:" + "0" * 64) == uploaded.step_keys("sha256:" + "0" * 64)
    assert inline.digests.context_digest == uploaded.digests.context_digest
    unknown = make_plan(validate_create_request({"base_image": BASE, "steps": copy, "build_context": {"files": [
        {"path": "f", "entry_type": "file", "blob_id": "blob_1"}]}}))  # a plan before the upload: named by its id
    assert unknown.context[0].digest == "blob:blob_1"
