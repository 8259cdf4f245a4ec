"""Credential kinds of the contract (base_image_auth): parsing, secrecy, and the ECR / GCP token exchanges.

The AWS and Google endpoints are small HTTP servers on loopback (boto3 honours ``AWS_ENDPOINT_URL_ECR``;
a service-account key names its own ``token_uri``); boto3 and google-auth themselves run unmodified, and the
exchanged credentials then pull from the real registry.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from amber.oci import (
    AwsEcrCredentials,
    BasicCredentials,
    CredentialsError,
    GcpServiceAccountCredentials,
    credentials_from_base_image_auth,
    exchange_credentials,
    resolve,
)
from tests.support.images import push_busybox_image
from tests.support.registry import Registry


@dataclass
class FakeEndpoint:
    """A loopback HTTP endpoint answering every POST with ``reply`` and recording requests."""

    status: int
    reply: dict[str, Any]
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@contextmanager
def fake_endpoint(status: int, reply: dict[str, Any]) -> Iterator[FakeEndpoint]:
    endpoint = FakeEndpoint(status, reply)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            endpoint.requests.append((dict(self.headers.items()), body))
            data = json.dumps(endpoint.reply).encode()
            self.send_response(endpoint.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_base_image_auth_shapes() -> None:
    assert credentials_from_base_image_auth({"kind": "basic", "username": "u", "password": "p"}) == \
        BasicCredentials("u", "p")
    ecr = credentials_from_base_image_auth({"kind": "aws_ecr", "access_key_id": "AKIA", "secret_access_key": "s",
                                            "region": "eu-west-1"})
    assert ecr == AwsEcrCredentials("AKIA", "s", "eu-west-1")
    as_object = credentials_from_base_image_auth({"kind": "gcp_artifact_registry",
                                                  "service_account_json": {"type": "service_account"}})
    as_string = credentials_from_base_image_auth({"kind": "gcp_artifact_registry",
                                                  "service_account_json": '{"type": "service_account"}'})
    assert as_object == as_string == GcpServiceAccountCredentials({"type": "service_account"})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "basic", "username": "u"}, "'password'"),
        ({"kind": "aws_ecr", "access_key_id": "a", "secret_access_key": "s"}, "'region'"),
        ({"kind": "gcp_artifact_registry", "service_account_json": "{not json"}, "not valid JSON"),
        ({"kind": "gcp_artifact_registry", "service_account_json": {}}, "non-empty object"),
        ({"kind": "ldap"}, "unknown base_image_auth kind 'ldap'"),
    ],
)
def test_bad_shapes_name_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(CredentialsError, match=message):
        credentials_from_base_image_auth(data)


def test_secrets_never_in_repr() -> None:
    values = [BasicCredentials("user", "pw-secret"), AwsEcrCredentials("AKIAID", "aws-secret", "r", "sess-secret"),
              GcpServiceAccountCredentials({"private_key": "gcp-secret"})]
    text = repr(values)
    for secret in ("pw-secret", "AKIAID", "aws-secret", "sess-secret", "gcp-secret"):
        assert secret not in text


@pytest.fixture
def isolated_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_ecr_token_exchange_then_pull(registry_htpasswd: Registry, monkeypatch: pytest.MonkeyPatch,
                                      isolated_aws: None) -> None:
    assert registry_htpasswd.credentials is not None
    user, password = registry_htpasswd.credentials
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    reply = {"authorizationData": [{"authorizationToken": token, "proxyEndpoint": "https://x", "expiresAt": 0}]}
    ref = push_busybox_image(registry_htpasswd, repo="private/ecr")
    with fake_endpoint(200, reply) as ecr:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", ecr.url)
        creds = AwsEcrCredentials("AKIATESTKEY", "aws-secret-key", "eu-west-1")
        resolved = asyncio.run(resolve(ref, credentials=creds))
    assert resolved.manifest_digest.startswith("sha256:")
    headers, _ = ecr.requests[0]
    assert headers["X-Amz-Target"].endswith("GetAuthorizationToken")
    assert "Credential=AKIATESTKEY/" in headers["Authorization"]  # SigV4-signed with the caller's key


def test_ecr_rejection_is_a_clear_error_without_secrets(monkeypatch: pytest.MonkeyPatch, isolated_aws: None) -> None:
    reply = {"__type": "UnrecognizedClientException", "message": "The security token included is invalid."}
    with fake_endpoint(400, reply) as ecr:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ECR", ecr.url)
        with pytest.raises(CredentialsError, match="AWS ECR token exchange failed in region eu-west-1") as caught:
            exchange_credentials(AwsEcrCredentials("AKIATESTKEY", "aws-secret-key", "eu-west-1", "sess-tok"))
    assert "aws-secret-key" not in str(caught.value) and "sess-tok" not in str(caught.value)


def _service_account(token_uri: str) -> tuple[dict[str, str], rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "p", "private_key_id": "k1", "private_key": pem,
            "client_email": "builder@p.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}
    return info, key


def test_gcp_service_account_exchange_then_pull(registry_token: Registry) -> None:
    ref = push_busybox_image(registry_token, repo="private/gcp")
    access_token = "ya29.test-access-token"
    assert registry_token.token_server is not None
    registry_token.token_server.add_user("oauth2accesstoken", access_token)
    with fake_endpoint(200, {"access_token": access_token, "expires_in": 3600, "token_type": "Bearer"}) as google:
        info, key = _service_account(f"{google.url}/token")
        resolved = asyncio.run(resolve(ref, credentials=GcpServiceAccountCredentials(info)))
    assert resolved.manifest_digest.startswith("sha256:")
    form = parse_qs(google.requests[0][1].decode())
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    claims = jwt.decode(form["assertion"][0], key.public_key(), algorithms=["RS256"], options={"verify_aud": False})
    assert claims["iss"] == info["client_email"] and "cloud-platform" in claims["scope"]


def test_gcp_rejection_is_a_clear_error_without_secrets() -> None:
    with fake_endpoint(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}) as google:
        info, _ = _service_account(f"{google.url}/token")
        with pytest.raises(CredentialsError, match=r"builder@p\.iam\.gserviceaccount\.com") as caught:
            exchange_credentials(GcpServiceAccountCredentials(info))
    assert "PRIVATE KEY" not in str(caught.value)
