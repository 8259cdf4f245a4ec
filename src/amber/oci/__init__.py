"""OCI images from registries: references, credentials, manifests and platform choice, verified layer pulls.

Public API (see docs/oci.md); references are the contract's (``amber.contract.images``)::

    from amber.contract.images import parse_reference
    from amber.oci import resolve, pull, LayerCache, BasicCredentials, ImageImportError
    ref = parse_reference("127.0.0.1:5000/team/app:1.0")
    image = await pull(ref, cache=layer_cache_dir(data_dir), credentials=BasicCredentials("u", "p"))
    image.resolved.manifest_digest  # the cache key
"""

from amber.oci.cache import LayerCache, layer_cache_dir
from amber.oci.credentials import (
    AwsEcrCredentials,
    BasicCredentials,
    GcpServiceAccountCredentials,
    RegistryCredentials,
    credentials_from_base_image_auth,
    exchange_credentials,
)
from amber.oci.errors import (
    CredentialsError,
    DigestMismatchError,
    ImageConfigError,
    ImageImportError,
    ImageNotFoundError,
    InsecureRegistryError,
    LayerRejectedError,
    ManifestNotFoundError,
    PlatformError,
    RegistryAuthError,
    RegistryError,
    RepositoryNotFoundError,
    RootDiskError,
    TruncatedDownloadError,
    UnsafeLayerError,
    UnsupportedEntryError,
    UnsupportedMediaTypeError,
)
from amber.oci.platform import Platform, parse_platform
from amber.oci.progress import ImportProgress
from amber.oci.pull import LayerFile, PulledImage, PullSession, ResolvedImage, pull, pulling, resolve

__all__ = [
    "AwsEcrCredentials",
    "BasicCredentials",
    "CredentialsError",
    "DigestMismatchError",
    "GcpServiceAccountCredentials",
    "ImageConfigError",
    "ImageImportError",
    "ImageNotFoundError",
    "ImportProgress",
    "InsecureRegistryError",
    "LayerCache",
    "LayerFile",
    "LayerRejectedError",
    "ManifestNotFoundError",
    "Platform",
    "PlatformError",
    "PullSession",
    "PulledImage",
    "RegistryAuthError",
    "RegistryCredentials",
    "RegistryError",
    "RepositoryNotFoundError",
    "ResolvedImage",
    "RootDiskError",
    "TruncatedDownloadError",
    "UnsafeLayerError",
    "UnsupportedEntryError",
    "UnsupportedMediaTypeError",
    "credentials_from_base_image_auth",
    "exchange_credentials",
    "layer_cache_dir",
    "parse_platform",
    "pull",
    "pulling",
    "resolve",
]
