"""The base image's registry credentials for one build, from the memory-only ``BuildInputs``.

A credential may be the request's ``base_image_auth`` model, a plain dict of the same shape or already an
``amber.oci`` credentials object; a ``registry_auth`` entry for the base image's host is used when no
``base_image_auth`` was given. Values stay in memory and are never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, SecretStr

from amber.builds.executor import BuildInputs
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


def base_image_credentials(base_image: str, inputs: BuildInputs) -> RegistryCredentials | None:
    """The credentials to pull ``base_image`` with: ``base_image_auth``, else the ``registry_auth`` entry for its
    host. Raises ``CredentialsError``."""
    if inputs.base_image_credentials is not None:
        return to_registry_credentials(inputs.base_image_credentials)
    host = registry_host(base_image)
    for key, value in inputs.registry_credentials.items():
        if canonical_host(key) == host:
            return to_registry_credentials(value)
    return None
