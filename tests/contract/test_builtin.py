"""The builtin template ``nullspace/base`` through the unmodified SDK on a real server (SQLite and PostgreSQL):
listed as builtin and public for every namespace, read by its refs, never deleted, and a template base that
``Template.from_template("base")`` builds on (python3 works in its steps, /workspace is the workdir)."""

from __future__ import annotations

import threading

import pytest
from nullspace import MachineError, NotFoundError, Template, TemplateBuild, TemplateBuildLogEntry, TemplateInfo

from tests.contract.conftest import Sdk, unique

pytestmark = pytest.mark.vm

REF = "nullspace/base"


def test_listed_as_builtin_for_every_namespace(sdk: Sdk) -> None:
    ids = set()
    for conn in (sdk.acme, sdk.other):
        listed = [i for i in Template.list(**conn) if isinstance(i, TemplateInfo) and i.namespace_slug == "nullspace"]
        assert [i.canonical_ref for i in listed] == [f"{REF}:latest"]
        base = listed[0]
        assert base.builtin is True and base.visibility == "public" and base.name == "base"
        assert set(base.tags) == {"latest", "default"} and base.default_tag == "latest"
        assert base.runtime_defaults is not None and base.runtime_defaults.default_workdir == "/workspace"
        assert base.runtime_defaults.default_user == "root" and base.runtime_defaults.start_cmd is None
        assert set(base.runtime_defaults.default_env_keys) == {"PATH", "HOME", "LANG"}
        ids.add(base.id)
    assert len(ids) == 1
    masked = Template.list(fields=["canonical_ref", "builtin"], **sdk.other)
    assert {"canonical_ref": f"{REF}:latest", "builtin": True} in masked


def test_get_by_every_ref(sdk: Sdk) -> None:
    first = Template.get(REF, **sdk.acme)
    assert isinstance(first, TemplateInfo) and first.builtin is True
    for ref in (f"{REF}:latest", f"{REF}:default", first.id):
        info = Template.get(ref, **sdk.other)
        assert isinstance(info, TemplateInfo) and info.id == first.id and info.builtin is True
    assert Template.exists(REF, **sdk.acme) is True
    with pytest.raises(NotFoundError):
        Template.get(f"{REF}:nope", **sdk.acme)


def test_builtin_cannot_be_deleted_or_changed(sdk: Sdk) -> None:
    for ref in (REF, f"{REF}:latest"):
        with pytest.raises(MachineError) as refused:
            Template.delete(ref, **sdk.acme)
        assert refused.value.code == "invalid_request" and "builtin" in str(refused.value)
    with pytest.raises(NotFoundError):  # by id it names a template of another namespace: not the caller's to delete
        Template.delete(Template.get(REF, **sdk.acme).id, **sdk.acme)  # type: ignore[union-attr]
    with pytest.raises(MachineError) as tags:
        Template.get_tags(REF, **sdk.acme)
    assert tags.value.code == "invalid_request"
    info = Template.get(f"{REF}:latest", **sdk.acme)
    assert isinstance(info, TemplateInfo) and info.builtin is True


def test_from_template_base_builds_with_python(sdk: Sdk) -> None:
    template = (
        Template.from_template("base")
        .run_cmd("python3 -c 'import sys, json; print(json.dumps({\"py\": sys.version_info[0]}))' > out.json")
        .run_cmd("pwd && cat out.json && ps -o comm= -p $$")
    )
    entries: list[TemplateBuildLogEntry] = []
    name = unique("on-base")
    done: list[TemplateBuild] = []
    worker = threading.Thread(target=lambda: done.append(Template.build(template, name, on_log_entry=entries.append,
                                                                        **sdk.acme)), daemon=True)  # fmt: skip
    worker.start()
    worker.join(timeout=480)  # a liveness bound (~6 s alone here): a stuck build fails with what it logged
    assert done, "the build did not end; its log so far:\n" + "\n".join(
        f"{e.timestamp} {e.phase} {e.message}" for e in entries) + "\nserver log:\n" + \
        sdk.server.log_path.read_text()[-3000:]
    build = done[0]
    assert build.status.value == "ready"
    messages = [e.message for e in entries]
    assert any("base template nullspace/base:latest" in m for m in messages), messages
    assert "/workspace" in messages and '{"py": 3}' in messages and "sh" in messages
    info = Template.get(name, **sdk.acme)
    assert isinstance(info, TemplateInfo) and info.builtin is False and info.namespace_slug == "acme"
    assert info.runtime_defaults is not None and info.runtime_defaults.default_workdir == "/workspace"
    assert "LANG" in info.runtime_defaults.default_env_keys
    build.close()
