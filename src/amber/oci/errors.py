"""The exceptions of image import: one base class callers catch, a few subclasses they may tell apart.

Messages name the image, registry, digest, platform or layer entry involved and never contain credentials.
"""

from __future__ import annotations


class ImageImportError(Exception):
    """Base of every error raised while resolving, pulling, unpacking or writing an image."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RegistryAuthError(ImageImportError):
    """The registry refused the credentials (or needs some and none were given)."""


class ImageNotFoundError(ImageImportError):
    """The repository, tag or digest does not exist (or is not visible with these credentials)."""


class RepositoryNotFoundError(ImageNotFoundError):
    """The registry does not know the repository."""


class ManifestNotFoundError(ImageNotFoundError):
    """The repository exists but the tag or digest does not."""


class RegistryError(ImageImportError):
    """The registry answered something unexpected, or could not be reached."""


class InsecureRegistryError(ImageImportError):
    """Plain HTTP was needed for a host that is neither loopback nor explicitly allowed."""


class DigestMismatchError(ImageImportError):
    """Downloaded bytes do not hash to the digest the manifest (or reference) promised."""


class TruncatedDownloadError(ImageImportError):
    """A download ended before the size the manifest promised."""


class UnsupportedMediaTypeError(ImageImportError):
    """A manifest or layer uses a media type (or compression) Amber does not import."""


class PlatformError(ImageImportError):
    """No manifest fits the wanted platform; the message lists the platforms found."""


class CredentialsError(ImageImportError):
    """Credentials could not be turned into registry auth (bad shape, missing optional extra, exchange failed)."""


class LayerRejectedError(ImageImportError):
    """A layer holds an entry Amber refuses to unpack. ``entry`` and ``layer`` name it."""

    def __init__(self, message: str, *, entry: str, layer: str) -> None:
        super().__init__(message)
        self.entry = entry
        self.layer = layer


class UnsafeLayerError(LayerRejectedError):
    """An entry would write or link outside the target tree (``..``, hard link out of the tree)."""


class UnsupportedEntryError(LayerRejectedError):
    """An entry is a socket, FIFO, block or character device (rejected by the contract, R34)."""


class ImageConfigError(ImageImportError):
    """The image config is malformed, or its ``User`` cannot be resolved in the image."""


class RootDiskError(ImageImportError):
    """Making the ext4 root disk failed."""
