"""Pure ref parsing (R7) and raw-path route readings (§0.6, §11, R8), including a property test: any valid ref,
percent-encoded the way the generated client does it, routes back to exactly that ref and sub-resource."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amber.api.refs import RefRoute, route_candidates
from amber.contract.errors import InvalidRef
from amber.contract.template_refs import parse_ref

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
tags = names.filter(lambda t: not t.startswith("tb_"))
slugs = st.from_regex(r"[a-z0-9]{1,8}(-[a-z0-9]{1,8}){0,2}", fullmatch=True)


@st.composite
def refs(draw: st.DrawFn) -> str:
    ref = draw(names)
    if draw(st.booleans()):
        ref = f"{draw(slugs)}/{ref}"
    qualifier = draw(st.one_of(st.none(), tags, st.from_regex(r"tb_[a-z0-9]{4,12}", fullmatch=True)))
    return f"{ref}:{qualifier}" if qualifier else ref


def test_every_ref_form() -> None:
    assert parse_ref("tmpl_abc").artifact_id == "tmpl_abc"
    bare = parse_ref("app")
    assert (bare.namespace, bare.name, bare.tag, bare.build_id) == (None, "app", None, None)
    tagged = parse_ref("acme/python-dev:stable")
    assert (tagged.namespace, tagged.name, tagged.tag) == ("acme", "python-dev", "stable")
    exact = parse_ref("acme/app:tb_0123")
    assert exact.build_id == "tb_0123" and exact.tag is None
    assert parse_ref("nullspace/base:latest").is_builtin
    legacy = parse_ref("0b8f4f8e-1c1e-4c5e-9a57-1f4bb6d1b2c3/app:v1")
    assert legacy.namespace == "0b8f4f8e-1c1e-4c5e-9a57-1f4bb6d1b2c3"
    for bad in ("", " app", "a/b/c", "Acme/app", "app:", "app:a b", "/app", "app/", "a:b:c"):
        with pytest.raises(InvalidRef):
            parse_ref(bad)


def test_route_readings() -> None:
    assert route_candidates("GET", quote("acme/x:stable", safe="")) == [RefRoute("acme/x:stable")]
    assert route_candidates("GET", "acme/x:stable/tags") == [RefRoute("acme/x:stable", "tags")]
    # R8: "acme/tags" is first read as a whole ref, then as the tag list of "acme".
    assert route_candidates("GET", "acme/tags") == [RefRoute("acme/tags"), RefRoute("acme", "tags")]
    assert route_candidates("GET", "acme/tags/tags") == [RefRoute("acme/tags", "tags")]
    assert route_candidates("DELETE", "acme/x/tags/v1") == [RefRoute("acme/x", "tags", "v1")]
    assert route_candidates("PATCH", f"{quote('acme/x', safe='')}/visibility") == [RefRoute("acme/x", "visibility")]
    assert route_candidates("GET", "a/b/c/d") == []
    assert route_candidates("GET", "") == []


@given(ref=refs(), method_sub=st.sampled_from([("GET", None), ("DELETE", None), ("GET", "tags"),
                                                ("GET", "aliases"), ("GET", "builds"), ("POST", "tags"),
                                                ("POST", "rename"), ("PATCH", "visibility")]))
def test_encoded_refs_route_back(ref: str, method_sub: tuple[str, str | None]) -> None:
    method, sub = method_sub
    raw = quote(ref, safe="") + (f"/{sub}" if sub else "")
    readings = route_candidates(method, raw)
    assert RefRoute(ref, sub) in readings
    if "/" in ref or sub is None:
        assert readings[0] == RefRoute(ref, sub)  # a %2F-encoded ref can never be read as a longer one
    else:
        # ``name/tags`` may also name the template ``tags`` in namespace ``name``: R8 decides by existence.
        assert readings in ([RefRoute(ref, sub)], [RefRoute(f"{ref}/{sub}"), RefRoute(ref, sub)])
    assert RefRoute(ref, sub).internal_path().endswith(raw)


@given(ref=refs(), arg=tags, sub=st.sampled_from(["tags", "aliases"]))
def test_encoded_deletes_route_back(ref: str, arg: str, sub: str) -> None:
    raw = f"{quote(ref, safe='')}/{sub}/{quote(arg, safe='')}"
    assert route_candidates("DELETE", raw)[0] == RefRoute(ref, sub, arg)
