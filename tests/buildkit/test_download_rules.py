"""The pure rules behind ``ADD <url>`` isolation and the refused frontends (no dockerd, no network)."""

from __future__ import annotations

import pytest

from amber.buildkit.downloads import buildkit_file_name, rewrite
from amber.contract.dockerfile import analyse_dockerfile, dockerfile_request_problems
from amber.contract.failures import BuildFailed

DOCKERFILE = """\
FROM 127.0.0.1:5000/base
ARG U=http://127.0.0.1:5000/v2/_catalog
ADD $U /a
ADD --chown=1:1 https://example.com/f.tgz \\
    /b/
ADD ["http://example.com/dir/", "/c"]
ADD app/$VERSION.tgz /d
COPY http-notes.txt /e
FROM scratch
ADD $UNSET/x /f
"""


def test_downloads_are_found_after_arg_expansion_on_their_lines() -> None:
    analysis = analyse_dockerfile(DOCKERFILE)
    assert analysis.problems == []
    found = [(d.line, d.end_line, d.written, d.urls) for d in analysis.downloads]
    assert found == [
        (3, 3, ("$U",), ("http://127.0.0.1:5000/v2/_catalog",)),
        (4, 5, ("https://example.com/f.tgz",), ("https://example.com/f.tgz",)),
        (6, 6, ("http://example.com/dir/",), ("http://example.com/dir/",)),
    ]
    with_arg = analyse_dockerfile(DOCKERFILE, {"U": "local/file"})
    assert [d.line for d in with_arg.downloads] == [4, 6]  # build_args win: line 3 is a local file now


@pytest.mark.parametrize(("source", "refused"), [
    ("$FROM_IMAGE", True),  # only the base image's ENV could set it: it could be a URL
    ("${FROM_IMAGE}/x", True),
    ("http://$FROM_IMAGE/x", True),  # a URL Amber cannot know before the build
    ("ht$FROM_IMAGE", True),
    ("app/$FROM_IMAGE.tgz", False),  # a local path whatever the variable is
    ("$SET/x", False),
])
def test_sources_the_base_image_could_turn_into_urls_are_refused(source: str, refused: bool) -> None:
    text = f"FROM 127.0.0.1:5000/base\nENV SET=files\nADD {source} /dst\n"
    problems = analyse_dockerfile(text).problems
    assert bool(problems) == refused, problems
    if refused:
        assert problems[0].field == "dockerfile" and problems[0].message.startswith("line 3: ADD source")


def test_without_internet_every_download_is_refused_with_its_line() -> None:
    problems = dockerfile_request_problems(DOCKERFILE, internet_access=False)
    assert [p.message.split(":")[0] for p in problems] == ["line 3", "line 4", "line 6"]
    assert all(p.field == "dockerfile" and "internet_access is false" in p.message for p in problems)
    assert dockerfile_request_problems(DOCKERFILE, internet_access=True) == []


def test_mixed_add_syntax_directive_and_syntax_build_arg_are_refused() -> None:
    mixed = analyse_dockerfile("FROM 127.0.0.1:5000/b\nADD http://e.com/x local.txt /d/\n").problems
    assert [p.message for p in mixed] == ["line 2: ADD mixes URLs and local files; put the downloads in an ADD "
                                          "of their own"]
    syntax = analyse_dockerfile("# syntax=docker/dockerfile:1.4\n# escape=\\\nFROM 127.0.0.1:5000/b\n").problems
    assert len(syntax) == 1 and syntax[0].message.startswith("line 1: the '# syntax=' directive")
    late = analyse_dockerfile("FROM 127.0.0.1:5000/b\n# syntax=x\n").problems  # not a directive any more
    assert late == []
    arg = analyse_dockerfile("FROM 127.0.0.1:5000/b\n", {"BUILDKIT_SYNTAX": "evil/frontend"}).problems
    assert [p.field for p in arg] == ["build_args"]


def test_rewrite_replaces_sources_in_place_and_keeps_lines() -> None:
    analysis = analyse_dockerfile(DOCKERFILE)
    replacement = {url: f"http://127.0.0.1:1/t/{i}/{buildkit_file_name(url)}"
                   for i, url in enumerate(u for d in analysis.downloads for u in d.urls)}
    out = rewrite(DOCKERFILE, analysis.downloads, replacement)
    lines = out.split("\n")
    assert len(lines) == len(DOCKERFILE.split("\n"))
    assert lines[2] == "ADD http://127.0.0.1:1/t/0/_catalog /a"
    assert lines[3] == "ADD --chown=1:1 http://127.0.0.1:1/t/1/f.tgz \\" and lines[4] == "    /b/"
    assert lines[5] == 'ADD ["http://127.0.0.1:1/t/2/dir", "/c"]'
    assert lines[7] == "COPY http-notes.txt /e"
    with pytest.raises(BuildFailed):
        rewrite(DOCKERFILE.replace("$U", "${U}"), analysis.downloads, replacement)


@pytest.mark.parametrize(("url", "name"), [
    ("http://e.com/a/b.tgz?x=1", "b.tgz"),
    ("http://e.com/a/dir/", "dir"),
    ("http://e.com/", "__unnamed__"),
    ("http://e.com", "__unnamed__"),
    ("http://e.com/with%20space", "with space"),
])
def test_file_names_follow_buildkit(url: str, name: str) -> None:
    assert buildkit_file_name(url) == name
