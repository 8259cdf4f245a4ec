"""Registry credentials and build secrets of a request (templates-models.md § 3.7-3.9). Memory only.

Every credential and secret value is a ``SecretStr`` (or hidden from ``repr``), so it cannot leak through logs
or error messages; ``request.persistable_request`` keeps only the kinds, registries and ids.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, SecretStr

from amber.contract._models import ClosedModel, OpenModel


def _service_account_json(value: Any) -> dict[str, Any] | str:
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            raise ValueError("must be a service-account JSON object or a string holding one") from None
        if not isinstance(decoded, dict) or not decoded:
            raise ValueError("must hold a non-empty JSON object")
        return value
    if isinstance(value, dict) and value:
        return value
    raise ValueError("must be a non-empty service-account JSON object (or a string holding one)")


# PlainValidator keeps pydantic's union member names out of error locations.
ServiceAccountJson = Annotated[dict[str, Any] | str, PlainValidator(_service_account_json)]


class BaseImageAuthBasic(OpenModel):
    kind: Literal["basic"]
    username: str
    password: SecretStr


class BaseImageAuthAwsEcr(OpenModel):
    kind: Literal["aws_ecr"]
    access_key_id: str
    secret_access_key: SecretStr
    region: str
    session_token: SecretStr | None = None


class BaseImageAuthGcpArtifactRegistry(OpenModel):
    kind: Literal["gcp_artifact_registry"]
    service_account_json: ServiceAccountJson = Field(repr=False)

    def service_account_info(self) -> dict[str, Any]:
        """The service-account key as an object, whichever form it was sent in."""
        value = self.service_account_json
        decoded: dict[str, Any] = json.loads(value) if isinstance(value, str) else value
        return decoded


BaseImageAuth = Annotated[
    BaseImageAuthBasic | BaseImageAuthAwsEcr | BaseImageAuthGcpArtifactRegistry, Field(discriminator="kind")
]


class RegistryAuth(ClosedModel):
    registry: str
    auth: BaseImageAuth


class BuildSecret(ClosedModel):
    id: str
    value: SecretStr
    source: Literal["value", "env", "file"] | None = None

