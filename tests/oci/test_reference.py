"""Image reference parsing: examples, Docker Hub normalisation, malformed input, and properties (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from amber.contract.errors import InvalidReferenceError
from amber.contract.images import ImageReference, canonical_host, explicit_registry, parse_reference, registry_host

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ubuntu", ImageReference("docker.io", "library/ubuntu", "latest")),
        ("ubuntu:22.04", ImageReference("docker.io", "library/ubuntu", "22.04")),
        ("library/ubuntu", ImageReference("docker.io", "library/ubuntu", "latest")),
        ("docker.io/ubuntu", ImageReference("docker.io", "library/ubuntu", "latest")),
        ("index.docker.io/library/ubuntu:x", ImageReference("docker.io", "library/ubuntu", "x")),
        ("acme/app", ImageReference("docker.io", "acme/app", "latest")),
        ("registry:5000/team/app:tag", ImageReference("registry:5000", "team/app", "tag")),
        ("127.0.0.1:5000/team/busybox:latest", ImageReference("127.0.0.1:5000", "team/busybox", "latest")),
        ("localhost/app", ImageReference("localhost", "app", "latest")),
        ("Registry/app", ImageReference("Registry", "app", "latest")),
        (f"ubuntu@{DIGEST}", ImageReference("docker.io", "library/ubuntu", None, DIGEST)),
        (f"ghcr.io/a/b:1.0@{DIGEST}", ImageReference("ghcr.io", "a/b", "1.0", DIGEST)),
        ("[::1]:5000/app:v1", ImageReference("[::1]:5000", "app", "v1")),
        ("a.b/c__d/e-f.g:TAG_1.x-y", ImageReference("a.b", "c__d/e-f.g", "TAG_1.x-y")),
    ],
)
def test_valid_references(text: str, expected: ImageReference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("Ubuntu", "must be lower-case"),
        ("ubuntu:", "invalid tag"),
        ("ubuntu:-x", "invalid tag"),
        ("ubuntu@sha256:abc", "malformed digest"),
        (f"ubuntu@md5:{'a' * 32}", "must be sha256"),
        (f"ubuntu@sha256:{'A' * 64}", "must be sha256 with 64 lower-case"),
        ("a b", "whitespace"),
        (" ubuntu", "whitespace"),
        ("team//app", "invalid repository path component ''"),
        ("team/app/", "invalid repository path component ''"),
        ("-bad.io/app", "invalid registry host"),
        ("reg.io/", "no repository name"),
        (":tag", "no repository name"),
        ("app__", "invalid repository path component"),
        ("a" * 300, "longer than 255"),
    ],
)
def test_malformed_references_are_rejected_clearly(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError, match=message):
        parse_reference(text)


_component = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+){0,2}", fullmatch=True).filter(lambda s: len(s) < 30)
_host = st.one_of(
    st.just("docker.io"),
    st.from_regex(r"[a-z][a-z0-9]{0,8}\.[a-z]{2,4}(?::[1-9][0-9]{0,4})?", fullmatch=True),
    st.from_regex(r"127\.0\.0\.1:[1-9][0-9]{1,4}", fullmatch=True),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)


@given(_host, st.lists(_component, min_size=1, max_size=3), st.none() | _tag, st.none() | _digest)
def test_canonical_form_round_trips(host: str, path: list[str], tag: str | None, digest: str | None) -> None:
    repository = "/".join(path)
    text = f"{host}/{repository}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    assert ref.registry == host
    expected_repo = f"library/{repository}" if host == "docker.io" and len(path) == 1 else repository
    assert ref.repository == expected_repo
    assert ref.digest == digest
    assert ref.tag == (tag if tag else (None if digest else "latest"))
    assert parse_reference(str(ref)) == ref
    assert ref.manifest_reference == (digest or tag or "latest")


@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_invalid_reference(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReferenceError as exc:
        assert exc.message
        return
    assert parse_reference(str(ref)) == ref


@given(st.lists(_component, min_size=1, max_size=3).filter(lambda p: "." not in p[0]), st.none() | _tag)
def test_docker_hub_aliases_normalise_identically(path: list[str], tag: str | None) -> None:
    name = "/".join(path)
    suffix = f":{tag}" if tag else ""
    forms = [f"{name}{suffix}", f"docker.io/{name}{suffix}", f"index.docker.io/{name}{suffix}"]
    refs = {parse_reference(f) for f in forms}
    assert len(refs) == 1
    (ref,) = refs
    assert ref.registry == "docker.io" and ref.api_host == "registry-1.docker.io"


# The one registry-host rule agrees with the parser: upper-case first components, ports, localhost, IPv6 literals
# and every Docker Hub alias (in any case) name the same registry through both.
_any_host = st.one_of(
    st.sampled_from(["docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com",
                     "Docker.IO", "INDEX.docker.io", "localhost", "localhost:5000", "[::1]:5000"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,8}(?:\.[A-Za-z]{2,4})?(?::[1-9][0-9]{0,4})?", fullmatch=True).filter(
        lambda h: "." in h or ":" in h or h.lower() != h or h == "localhost"),
)


@given(st.none() | _any_host, st.lists(_component, min_size=1, max_size=3), st.none() | _tag, st.none() | _digest)
def test_registry_host_agrees_with_the_parser(
    host: str | None, path: list[str], tag: str | None, digest: str | None
) -> None:
    assume(host is not None or "." not in path[0])  # else the first component is itself a host
    text = (f"{host}/" if host else "") + "/".join(path) + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    assert registry_host(text) == canonical_host(ref.registry)
    assert registry_host(text) == (canonical_host(host) if host else "docker.io")
    assert (explicit_registry(text) is None) == (host is None)


@given(st.text(max_size=60))
def test_registry_host_agrees_with_the_parser_on_any_accepted_text(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReferenceError:
        return
    assert registry_host(text) == canonical_host(ref.registry)


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("Foo/bar", "foo"),  # an upper-case first component can only be a host: repositories are lower-case
        ("foo/bar", "docker.io"),
        ("localhost/app", "localhost"),
        ("localhost:5000/app:1", "localhost:5000"),
        ("127.0.0.1:5000/team/app", "127.0.0.1:5000"),
        ("registry-1.docker.io/library/ubuntu", "docker.io"),
        ("Index.Docker.io/x/y", "docker.io"),
        ("ubuntu@" + DIGEST, "docker.io"),
    ],
)
def test_registry_host_examples(text: str, host: str) -> None:
    assert registry_host(text) == host
    assert canonical_host(parse_reference(text).registry) == host
