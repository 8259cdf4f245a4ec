"""The base image's registry credentials for one build, from whatever form the service hands over.

``BuildJob.base_image_credentials`` may be the request's ``base_image_auth`` model, a plain dict of the same
shape or already an ``amber.oci`` credentials object; ``registry_auth`` entries for the base image's host are
used when no ``base_image_auth`` was given. Values stay in memory and are never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, SecretStr

from amber.contract.images import canonical_host, registry_host
from amber.oci.credentials import (
    AwsEcrCredentials,
    BasicCredentials,
    GcpServiceAccountCredentials,
    RegistryCredentials,
    credentials_from_base_image_auth,
)


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields} | dict(value.model_extra or {})
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_registry_credentials(value: Any) -> RegistryCredentials | None:
    """Any accepted form → ``amber.oci`` credentials (None for None). Raises ``CredentialsError``."""
    if value is None:
        return None
    if isinstance(value, BasicCredentials | AwsEcrCredentials | GcpServiceAccountCredentials):
        return value
    auth = getattr(value, "auth", None)  # a TemplateRegistryAuth entry
    if auth is not None and hasattr(value, "registry"):
        value = auth
    return credentials_from_base_image_auth(_plain(value))


def base_image_credentials(
    base_image: str, explicit: Any, request_auth: Any, registry_credentials: Mapping[str, Any], request_registry: Any
) -> RegistryCredentials | None:
    """The credentials to pull ``base_image`` with: the job's resolved auth, else the request's
    ``base_image_auth``, else a ``registry_auth``/``registry_credentials`` entry for its host."""
    for candidate in (explicit, request_auth):
        if candidate is not None:
            return to_registry_credentials(candidate)
    host = registry_host(base_image)
    for key, value in registry_credentials.items():
        if canonical_host(key) == host:
            return to_registry_credentials(value)
    for entry in request_registry or []:
        if canonical_host(entry.registry) == host:
            return to_registry_credentials(entry.auth)
    return None
