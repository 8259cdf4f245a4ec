"""Registry fixtures shared by the OCI tests (session-scoped, one registry per auth mode)."""

from tests.support.registry import registry_htpasswd, registry_noauth, registry_token

__all__ = ["registry_htpasswd", "registry_noauth", "registry_token"]
