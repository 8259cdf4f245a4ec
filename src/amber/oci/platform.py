"""Platforms and the choice of one manifest from an image index (contract rule R36). Pure functions.

For the wanted architecture, an index entry is a candidate only when its ``os`` is ``linux`` and it sets
neither ``os.version`` nor a non-empty ``os.features``. Among candidates the preferred one carries the exact
compatible variant (amd64: ``v1``; arm64: ``v8`` or ``v8.0``), else one without a variant. Variants of other
levels (``amd64/v3``, ``arm/v7``) are never chosen unless asked for explicitly with ``linux/ARCH/VARIANT``.
"""

from __future__ import annotations

import platform as _host
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from amber.oci.errors import PlatformError

_MACHINE_TO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# The variants a guest of this architecture runs exactly (Firecracker-compatible, R36).
COMPATIBLE_VARIANTS: dict[str, frozenset[str]] = {
    "amd64": frozenset({"v1"}),
    "arm64": frozenset({"v8", "v8.0"}),
}


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]`` plus the ``os.version`` / ``os.features`` an index entry may carry."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        text = f"{self.os or 'unknown'}/{self.architecture or 'unknown'}"
        if self.variant:
            text += f"/{self.variant}"
        if self.os_version:
            text += f" (os.version {self.os_version})"
        if self.os_features:
            text += f" (os.features {','.join(self.os_features)})"
        return text

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Platform:
        data = data or {}
        features = data.get("os.features") or ()
        return cls(
            os=str(data.get("os", "")),
            architecture=str(data.get("architecture", "")),
            variant=str(data["variant"]) if data.get("variant") else None,
            os_version=str(data["os.version"]) if data.get("os.version") else None,
            os_features=tuple(str(f) for f in features) if isinstance(features, list) else (),
        )


def host_architecture() -> str:
    """The OCI architecture name of this machine (``amd64`` or ``arm64``)."""
    machine = _host.machine()
    if machine not in _MACHINE_TO_ARCH:
        raise PlatformError(f"unsupported host architecture {machine!r}: Amber imports amd64 and arm64 images")
    return _MACHINE_TO_ARCH[machine]


def parse_platform(text: str | None) -> Platform:
    """``linux/amd64``, ``linux/arm64/v8`` or ``amd64``; None means this host's Linux platform."""
    if text is None or not text.strip():
        return Platform("linux", host_architecture())
    parts = text.strip().split("/")
    if len(parts) == 1:
        parts = ["linux", *parts]
    if len(parts) > 3 or not all(parts):
        raise PlatformError(f"invalid platform {text!r}: expected os/architecture[/variant], e.g. linux/amd64")
    os_name, arch = parts[0].lower(), parts[1].lower()
    arch = _MACHINE_TO_ARCH.get(arch, arch)
    if os_name != "linux":
        raise PlatformError(f"invalid platform {text!r}: only linux images can run in a microVM")
    return Platform(os_name, arch, parts[2].lower() if len(parts) == 3 else None)


def _normal_variant(architecture: str, variant: str | None) -> str | None:
    if architecture == "arm64" and variant == "v8.0":
        return "v8"
    return variant


def rejection_reason(candidate: Platform) -> str | None:
    """Why an index entry can never be used (R36), or None."""
    if candidate.os_version:
        return f"sets os.version {candidate.os_version}"
    if candidate.os_features:
        return f"sets os.features {','.join(candidate.os_features)}"
    return None


def choose_platform(found: Sequence[Platform], wanted: Platform) -> int:
    """The index position of the manifest to use for ``wanted``, by R36; :class:`PlatformError` if none fits.

    ``wanted.variant`` None means "this architecture's exact compatible variant, else none"; a given variant
    must match exactly (``v8`` and ``v8.0`` are the same for arm64).
    """
    usable = [
        i
        for i, p in enumerate(found)
        if p.os == wanted.os and p.architecture == wanted.architecture and rejection_reason(p) is None
    ]
    if wanted.variant is not None:
        want = _normal_variant(wanted.architecture, wanted.variant)
        preferences = [[i for i in usable if _normal_variant(found[i].architecture, found[i].variant) == want]]
    else:
        exact = COMPATIBLE_VARIANTS.get(wanted.architecture, frozenset())
        preferences = [
            [i for i in usable if found[i].variant in exact],
            [i for i in usable if found[i].variant is None],
        ]
    for group in preferences:
        if group:
            return group[0]
    listing = ", ".join(
        str(p) + (" [rejected: " + reason + "]" if (reason := rejection_reason(p)) else "") for p in found
    )
    raise PlatformError(f"no manifest for platform {wanted} in the image index; platforms found: {listing or 'none'}")


def check_image_platform(found: Platform, wanted: Platform) -> None:
    """Check a single-manifest image's config platform against ``wanted`` (empty fields are accepted)."""
    if found.os and found.os != wanted.os:
        raise PlatformError(f"image is for platform {found}, wanted {wanted}")
    if found.architecture and found.architecture != wanted.architecture:
        raise PlatformError(f"image is for platform {found}, wanted {wanted}")
    if wanted.variant and found.variant and (
        _normal_variant(found.architecture, found.variant) != _normal_variant(wanted.architecture, wanted.variant)
    ):
        raise PlatformError(f"image is for platform {found}, wanted {wanted}")
    reason = rejection_reason(found)
    if reason is not None:
        raise PlatformError(f"image is for platform {found}: it {reason}, which a microVM cannot run")
