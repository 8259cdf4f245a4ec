"""Admission at accept (issue 11): a build asking for more than the host can give is a 400 naming the field and
the limit, and nothing is queued; ``ns/name`` refs are never pulled from Docker Hub by accident, with the same
answer whether the namespace exists or not. (The server runs with its default limits: this host's cores,
memory and free disk.)"""

from __future__ import annotations

import os
import uuid

import pytest

from amber.settings import free_disk_bytes, host_memory_mib
from tests.api.conftest import Api


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(("field", "value", "limit"), [
    ("vcpus", 64, f"limit of {os.cpu_count()} vCPUs"),
    ("memory_mib", 65536, f"limit of {host_memory_mib()} MiB"),
    ("disk_mb", 1024 * 1024, "MB per build"),
])  # fmt: skip
def test_over_the_host_limits_is_refused_and_nothing_is_queued(api: Api, field: str, value: int, limit: str) -> None:
    assert value > {"vcpus": os.cpu_count() or 1, "memory_mib": host_memory_mib(),
                    "disk_mb": free_disk_bytes(api.server.data_dir) // 2**20}[field]  # fmt: skip
    name = unique("too-big")
    answer = api.acme.post("/v1/templates/builds", json={"name": name, "base_image": "127.0.0.1:1/x:1",
                                                          "build_config": {field: value}})  # fmt: skip
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["code"] == "invalid_request"
    assert body["error"].startswith(f"build_config.{field}: {value} is over this server's limit") and limit in body[
        "error"], body
    assert api.acme.get(f"/v1/templates/refs/acme%2F{name}").status_code == 404  # no template, no build


def test_within_the_host_limits_is_accepted(api: Api) -> None:
    answer = api.acme.post("/v1/templates/builds", json={"name": unique("fits"), "base_image": "127.0.0.1:1/x:1",
                                                          "build_config": {"vcpus": 1, "memory_mib": 256}})
    assert answer.status_code == 202, answer.text
    api.acme.post(f"/v1/templates/builds/{answer.json()['build_id']}/cancel", json={})


def test_namespace_refs_are_never_docker_hub_and_do_not_reveal_namespaces(api: Api) -> None:
    """``other`` is a namespace of this server (another tenant's); ``ghost-…`` is none. Both answers match."""
    answers = {}
    for namespace in ("other", unique("ghost")):
        answer = api.acme.post("/v1/templates/builds", json={"name": unique("ref"),
                                                              "base_image": f"{namespace}/app:1"})  # fmt: skip
        assert answer.status_code == 400, answer.text
        answers[namespace] = answer.json()["error"].replace(namespace, "<ns>")
    first, second = answers.values()
    assert first == second, answers
    assert "docker.io/<ns>/app:1" in first and first.startswith("base_image:")
    hub = api.acme.post("/v1/templates/plan", json={"base_image": "docker.io/other/app:1"})
    assert hub.status_code == 200, hub.text  # the explicit Docker Hub spelling is an image, as asked


def test_a_dockerfile_from_namespace_name_is_refused_with_its_line(api: Api) -> None:
    for namespace in ("other", unique("ghost")):
        answer = api.acme.post("/v1/templates/builds", json={
            "name": unique("df"), "dockerfile": f"FROM 127.0.0.1:1/x:1\nRUN true\nFROM {namespace}/app:1\n"})
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert "line 3" in error and f"docker.io/{namespace}/app:1" in error, error
