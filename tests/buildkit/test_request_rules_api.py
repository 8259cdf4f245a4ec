"""The Dockerfile rules as the API applies them (``amber.contract.validation`` applies the rules of
``amber.contract.dockerfile``): each rejection names the field and the reason; SDK-shaped Dockerfile payloads
with base_image_auth pass."""

from __future__ import annotations

from typing import Any

import pytest
from nullspace.template import Template, _build_template_payload

from amber.contract.errors import InvalidRequest
from amber.contract.validation import validate_create_request

R = "127.0.0.1:5000"
BASIC = {"kind": "basic", "username": "u", "password": "p"}


def rejection(payload: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        validate_create_request(payload)
    return caught.value


def test_sdk_dockerfile_payload_with_base_image_auth_is_accepted() -> None:
    builder = Template.from_dockerfile_content(f"FROM {R}/private/app:1\nRUN true\n")
    builder.set_base_image_auth(username="u", password="p")
    payload = _build_template_payload(builder)  # what Template.build() sends
    assert payload["base_image_auth"]["kind"] == "basic" and "dockerfile" in payload
    assert validate_create_request(payload).base_image_auth is not None


@pytest.mark.parametrize(
    ("dockerfile", "reason"),
    [
        (f"ARG BASE={R}/a\nFROM ${{BASE}}\n", "FROM on line 2 uses a variable (${BASE})"),
        (f"FROM {R}/a\nCOPY --from={R}/b:1 /x /y\n", "alias-based imported stage"),
        (f"FROM later\nFROM {R}/a AS later\n", "names a stage alias defined only later"),
        (f"FROM {R}/a AS a\nFROM 127.0.0.1:6000/b\n", "more than one external registry"),
        ("FROM scratch\n", "imports no registry image"),
    ],
)
def test_base_image_auth_rejections(dockerfile: str, reason: str) -> None:
    error = rejection({"dockerfile": dockerfile, "base_image_auth": BASIC})
    assert error.field == "base_image_auth" and reason in error.message


def test_dockerfile_target_and_registry_auth_rejections() -> None:
    error = rejection({"dockerfile": f"FROM {R}/a AS one\n", "build_target": "two"})
    assert (error.field, error.message) == ("build_target", "no stage named 'two' (stages: one)")
    error = rejection({"dockerfile": "RUN true\n"})
    assert (error.field, error.message) == ("dockerfile", "has no FROM instruction")
    error = rejection({"dockerfile": f"FROM {R}/a\n", "registry_auth": [{"registry": "quay.io", "auth": BASIC}]})
    assert error.field == "registry_auth[0].registry" and "quay.io" in error.message
    # Hosts named through build_args-expanded ARGs and --from count as used.
    ok = {
        "dockerfile": "ARG BASE\nFROM ${BASE}\nCOPY --from=127.0.0.1:6000/tools:1 /t /t\n",
        "build_args": {"BASE": f"{R}/a"},
        "registry_auth": [{"registry": R, "auth": BASIC}, {"registry": "127.0.0.1:6000", "auth": BASIC}],
    }
    assert validate_create_request(ok).registry_auth is not None
