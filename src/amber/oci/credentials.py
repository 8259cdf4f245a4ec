"""Registry credentials: the contract's ``base_image_auth`` kinds and their exchange for registry auth.

``basic`` is used as is. ``aws_ecr`` is exchanged for an ECR authorization token with boto3 (extra ``aws``),
``gcp_artifact_registry`` for an OAuth2 access token from the service-account key with google-auth (extra
``gcp``); both become HTTP Basic credentials for the registry (``AWS`` / ``oauth2accesstoken``). Values live
only in these in-memory objects: their ``repr`` hides secrets, and no error message includes them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from amber.oci.errors import CredentialsError

GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


@dataclass(frozen=True)
class BasicCredentials:
    """Username and password (or token) sent as HTTP Basic, or to a bearer-token realm."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class AwsEcrCredentials:
    """AWS keys for an ECR registry; exchanged for a 12-hour authorization token."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    region: str
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class GcpServiceAccountCredentials:
    """A Google service-account key (the JSON object) for Artifact Registry / GCR."""

    service_account_info: Mapping[str, Any] = field(repr=False)


RegistryCredentials = BasicCredentials | AwsEcrCredentials | GcpServiceAccountCredentials


def _required_str(data: Mapping[str, Any], key: str, kind: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise CredentialsError(f"base_image_auth of kind {kind!r} needs a non-empty string field {key!r}")
    return value


def credentials_from_base_image_auth(data: Mapping[str, Any]) -> RegistryCredentials:
    """Build credentials from the contract's ``base_image_auth`` object (discriminated by ``kind``)."""
    kind = data.get("kind")
    if kind == "basic":
        return BasicCredentials(_required_str(data, "username", kind), _required_str(data, "password", kind))
    if kind == "aws_ecr":
        token = data.get("session_token")
        if token is not None and not isinstance(token, str):
            raise CredentialsError("base_image_auth of kind 'aws_ecr': 'session_token' must be a string")
        return AwsEcrCredentials(
            _required_str(data, "access_key_id", kind),
            _required_str(data, "secret_access_key", kind),
            _required_str(data, "region", kind),
            token or None,
        )
    if kind == "gcp_artifact_registry":
        info = data.get("service_account_json")
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                raise CredentialsError(
                    "base_image_auth of kind 'gcp_artifact_registry': 'service_account_json' is not valid JSON"
                ) from None
        if not isinstance(info, dict) or not info:
            raise CredentialsError(
                "base_image_auth of kind 'gcp_artifact_registry' needs 'service_account_json' as a non-empty object"
            )
        return GcpServiceAccountCredentials(info)
    raise CredentialsError(f"unknown base_image_auth kind {kind!r}; expected basic, aws_ecr or gcp_artifact_registry")


def _ecr_basic(credentials: AwsEcrCredentials) -> BasicCredentials:
    try:
        import boto3  # optional extra: amber[aws]
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]
    except ImportError:
        raise CredentialsError(
            "aws_ecr credentials need boto3: install Amber with the 'aws' extra (pip install 'amber[aws]')"
        ) from None
    client = boto3.client(
        "ecr",
        region_name=credentials.region,
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
    )
    try:
        reply = client.get_authorization_token()
        token = reply["authorizationData"][0]["authorizationToken"]
        username, _, password = base64.b64decode(token).decode().partition(":")
    except (BotoCoreError, ClientError) as exc:
        # botocore messages name the operation and AWS error code, never the secret key.
        raise CredentialsError(f"AWS ECR token exchange failed in region {credentials.region}: {exc}") from None
    except (KeyError, IndexError, ValueError, UnicodeDecodeError):
        raise CredentialsError("AWS ECR returned a malformed authorization token") from None
    return BasicCredentials(username, password)


def _gcp_basic(credentials: GcpServiceAccountCredentials) -> BasicCredentials:
    try:
        import urllib3
        from google.auth.exceptions import GoogleAuthError
        from google.auth.transport.urllib3 import Request
        from google.oauth2 import service_account
    except ImportError:
        raise CredentialsError(
            "gcp_artifact_registry credentials need google-auth: install Amber with the 'gcp' extra "
            "(pip install 'amber[gcp]')"
        ) from None
    try:
        sa = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            dict(credentials.service_account_info), scopes=[GCP_SCOPE]
        )
        sa.refresh(Request(urllib3.PoolManager()))  # type: ignore[no-untyped-call]
    except (GoogleAuthError, ValueError, KeyError) as exc:
        email = credentials.service_account_info.get("client_email", "?")
        raise CredentialsError(f"GCP service-account token exchange failed for {email}: {type(exc).__name__}") from None
    if not sa.token:
        raise CredentialsError("GCP token endpoint returned no access token")
    return BasicCredentials("oauth2accesstoken", str(sa.token))


def exchange_credentials(credentials: RegistryCredentials) -> BasicCredentials:
    """The registry-facing Basic credentials for ``credentials`` (blocking: may call AWS or Google)."""
    if isinstance(credentials, BasicCredentials):
        return credentials
    if isinstance(credentials, AwsEcrCredentials):
        return _ecr_basic(credentials)
    return _gcp_basic(credentials)
