"""Manifest and index parsing: the supported shapes, and arbitrary JSON failing only with import errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amber.oci.errors import ImageImportError, UnsupportedMediaTypeError
from amber.oci.manifest import ImageIndex, ImageManifest, parse_manifest
from amber.oci.media_types import DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST

D = "sha256:" + "1" * 64


def _manifest(layer_type: str = "application/vnd.oci.image.layer.v1.tar+gzip", **extra: object) -> bytes:
    return json.dumps({
        "schemaVersion": 2, **extra,
        "config": {"mediaType": OCI_CONFIG, "digest": D, "size": 10},
        "layers": [{"mediaType": layer_type, "digest": D, "size": 5}],
    }).encode()


def test_shapes() -> None:
    manifest = parse_manifest(_manifest(mediaType=OCI_MANIFEST), None)
    assert isinstance(manifest, ImageManifest) and manifest.layers[0].size == 5
    assert isinstance(parse_manifest(_manifest(), DOCKER_MANIFEST), ImageManifest)  # type from Content-Type
    assert isinstance(parse_manifest(_manifest(), "application/json"), ImageManifest)  # type from shape
    index = parse_manifest(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": D, "size": 1, "platform": {"os": "linux", "architecture": "arm64",
                                                                       "variant": "v8"}}]}).encode(), None)
    assert isinstance(index, ImageIndex) and str(index.manifests[0].platform) == "linux/arm64/v8"
    assert index.media_type == OCI_INDEX


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), "schema 1"),
        (_manifest(layer_type="application/vnd.oci.image.layer.v1.tar+bzip2"), r"tar\+bzip2"),
        (_manifest(mediaType="application/vnd.example+json"), "not supported"),
    ],
)
def test_unsupported(body: bytes, message: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError, match=message):
        parse_manifest(body, None)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["mediaType", "schemaVersion", "config", "layers", "manifests", "digest", "size",
                         "platform", "os", "architecture", "os.features"]), children, max_size=6),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(_json, st.sampled_from([None, OCI_MANIFEST, OCI_INDEX, "application/json"]))
def test_arbitrary_json_parses_or_raises_import_errors(doc: object, content_type: str | None) -> None:
    try:
        parse_manifest(json.dumps(doc).encode(), content_type)
    except ImageImportError as exc:
        assert exc.message
