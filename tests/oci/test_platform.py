"""Platform choice from an index (R36): exact compatible variant, variantless fallback, rejections. Pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amber.oci.errors import PlatformError
from amber.oci.platform import Platform, choose_platform, parse_platform

AMD64 = Platform("linux", "amd64")
AMD64_V1 = Platform("linux", "amd64", "v1")
AMD64_V3 = Platform("linux", "amd64", "v3")
ARM64_V8 = Platform("linux", "arm64", "v8")
ARM64_V80 = Platform("linux", "arm64", "v8.0")
ARM64 = Platform("linux", "arm64")
WINDOWS = Platform("windows", "amd64", os_version="10.0.17763.1")
OS_VERSION = Platform("linux", "amd64", os_version="5.10")
OS_FEATURES = Platform("linux", "amd64", "v1", os_features=("sse4",))
UNKNOWN = Platform("unknown", "unknown")


@pytest.mark.parametrize(
    ("found", "wanted", "index"),
    [
        ([AMD64, AMD64_V1], "linux/amd64", 1),  # exact variant preferred over variantless
        ([AMD64_V3, AMD64], "linux/amd64", 1),  # v3 is not the compatible variant
        ([OS_VERSION, AMD64, ARM64_V8], "linux/amd64", 1),
        ([OS_FEATURES, AMD64], "linux/amd64", 1),
        ([AMD64, ARM64, ARM64_V8], "linux/arm64", 2),
        ([AMD64, ARM64_V80], "linux/arm64", 1),
        ([AMD64, ARM64], "linux/arm64", 1),
        ([AMD64, ARM64_V80], "linux/arm64/v8", 1),  # v8 and v8.0 are the same
        ([AMD64_V1, AMD64_V3], "linux/amd64/v3", 1),  # an explicit variant must match exactly
        ([UNKNOWN, AMD64], "linux/amd64", 1),  # attestation manifests are never chosen
        ([AMD64], "amd64", 0),
        ([AMD64], "linux/x86_64", 0),
    ],
)
def test_choice(found: list[Platform], wanted: str, index: int) -> None:
    assert choose_platform(found, parse_platform(wanted)) == index


def test_no_match_names_every_platform_found() -> None:
    with pytest.raises(PlatformError) as caught:
        choose_platform([OS_VERSION, ARM64_V8, WINDOWS, AMD64_V3, Platform("", "")], parse_platform("linux/amd64"))
    message = str(caught.value)
    assert "no manifest for platform linux/amd64" in message
    for text in ("linux/amd64 (os.version 5.10) [rejected: sets os.version 5.10]", "linux/arm64/v8",
                 "windows/amd64", "linux/amd64/v3", "unknown/unknown"):
        assert text in message


@pytest.mark.parametrize(("text", "message"), [("windows/amd64", "only linux"), ("linux//v8", "invalid platform"),
                                               ("a/b/c/d", "invalid platform")])
def test_bad_platform_strings(text: str, message: str) -> None:
    with pytest.raises(PlatformError, match=message):
        parse_platform(text)


_platforms = st.builds(
    Platform,
    st.sampled_from(["linux", "windows"]),
    st.sampled_from(["amd64", "arm64", "arm", "s390x"]),
    st.sampled_from([None, "v1", "v2", "v3", "v7", "v8", "v8.0"]),
    st.sampled_from([None, "10.0"]),
    st.sampled_from([(), ("x",)]),
)


@given(st.lists(_platforms, max_size=8), st.sampled_from(["linux/amd64", "linux/arm64"]))
def test_choice_is_always_a_usable_linux_entry_of_the_wanted_arch(found: list[Platform], wanted: str) -> None:
    want = parse_platform(wanted)
    exact = {"amd64": {"v1"}, "arm64": {"v8", "v8.0"}}[want.architecture]
    try:
        chosen = found[choose_platform(found, want)]
    except PlatformError:
        assert not any(p.os == "linux" and p.architecture == want.architecture and not p.os_version
                       and not p.os_features and (p.variant is None or p.variant in exact) for p in found)
        return
    assert chosen.os == "linux" and chosen.architecture == want.architecture
    assert chosen.os_version is None and chosen.os_features == ()
    if any(p.variant in exact and p.os == "linux" and p.architecture == want.architecture and not p.os_version
           and not p.os_features for p in found):
        assert chosen.variant in exact
    else:
        assert chosen.variant is None
