"""Check, with the caller's own credentials, that the caller may pull an image, before every build.

BuildKit serves an image it pulled once to any later build by digest without asking the registry again, so
without this check a tenant could build ``FROM`` another tenant's private image. Guarantees: the manifest is
fetched (and, for digests, verified) through ``amber.oci``'s registry client with exactly the caller's
credentials (or anonymously); any failure raises ``ImageAccessDenied`` whose message names the image and the
registry's reason, never a password. Plain HTTP only for loopback hosts (the client's rule).
"""

from __future__ import annotations

from amber.contract.errors import InvalidReferenceError
from amber.contract.images import parse_reference
from amber.oci.credentials import BasicCredentials
from amber.oci.errors import ImageImportError
from amber.oci.registry import RegistryClient


class ImageAccessDenied(Exception):
    """The caller may not pull this image, or it does not exist."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"cannot pull {reference}: {reason}")
        self.reference = reference
        self.reason = reason


async def verify_pull_access(reference: str, credential: BasicCredentials | None) -> None:
    """Raise ``ImageAccessDenied`` unless ``credential`` (or anonymous access) may read the image manifest."""
    try:
        parsed = parse_reference(reference)
        async with RegistryClient(parsed.registry, api_host=parsed.api_host, credentials=credential) as client:
            await client.get_manifest(parsed.repository, parsed.manifest_reference)
    except (ImageImportError, InvalidReferenceError) as error:
        raise ImageAccessDenied(reference, str(error)) from None
