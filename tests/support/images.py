"""Build OCI images in pure Python and push them to a test registry with httpx.

- :func:`tar_tree` turns a directory tree into a layer tar (numeric owners, modes incl. set-id bits, hard
  links, symlinks, xattrs as PAX ``SCHILY.xattr.*`` records); :func:`tar_entries` writes hand-made entries,
  including hostile ones (``..``, absolute names, devices, FIFOs, sockets) for rejection tests.
- :class:`Layer` compresses a tar (gzip, zstd or raw) and knows its digest, diff_id and media type.
- :func:`build_image` writes the image config (``User``/``Env``/``WorkingDir``/``Cmd``/… settable, one
  ``history`` entry per layer) and manifest (OCI or Docker v2 schema 2 media types).
- :func:`push_image` / :func:`push_index` upload blobs (monolithic POST + PUT) and manifests, authenticating
  with the registry's admin credentials (Basic or Bearer); they return the manifest digest.
- :func:`push_busybox_image` does all of it in one call for a busybox-static image and returns the fully
  qualified reference ``127.0.0.1:PORT/team/busybox:latest``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import zstandard

from tests.support.busybox import make_busybox_tree
from tests.support.registry import Registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
FIXED_MTIME = 1_700_000_000
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Compression(StrEnum):
    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"


_OCI_LAYER_TYPES = {
    Compression.GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
    Compression.ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
    Compression.NONE: "application/vnd.oci.image.layer.v1.tar",
}
_DOCKER_LAYER_TYPES = {
    Compression.GZIP: "application/vnd.docker.image.rootfs.diff.tar.gzip",
    Compression.ZSTD: "application/vnd.docker.image.rootfs.diff.tar.zstd",
    Compression.NONE: "application/vnd.docker.image.rootfs.diff.tar",
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- tar writing --------------------------------------------------------------------------------------------


class EntryType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    FIFO = "fifo"
    CHAR = "char"
    BLOCK = "block"
    SOCKET = "socket"  # no tar type exists: written as a regular header whose mode carries S_IFSOCK


_TAR_TYPES = {
    EntryType.FILE: tarfile.REGTYPE,
    EntryType.DIR: tarfile.DIRTYPE,
    EntryType.SYMLINK: tarfile.SYMTYPE,
    EntryType.HARDLINK: tarfile.LNKTYPE,
    EntryType.FIFO: tarfile.FIFOTYPE,
    EntryType.CHAR: tarfile.CHRTYPE,
    EntryType.BLOCK: tarfile.BLKTYPE,
    EntryType.SOCKET: tarfile.REGTYPE,
}


@dataclass(frozen=True)
class TarEntry:
    """One tar member, written exactly as given (names are not normalised: hostile names stay hostile)."""

    name: str
    type: EntryType = EntryType.FILE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    mtime: int = FIXED_MTIME
    devmajor: int = 0
    devminor: int = 0


def _socket_header(info: tarfile.TarInfo) -> bytes:
    """A ustar header whose mode field carries S_IFSOCK (tarfile masks mode to 0o7777 when writing)."""
    buf = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    buf[100:108] = b"%07o\0" % (stat.S_IFSOCK | (info.mode & 0o7777))
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    return bytes(buf)


def tar_entries(entries: Iterable[TarEntry]) -> bytes:
    """A PAX tar of ``entries`` in order; xattrs become ``SCHILY.xattr.<name>`` records."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = _TAR_TYPES[entry.type]
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.uname = info.gname = ""
            info.mtime = entry.mtime
            info.linkname = entry.linkname
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            info.size = len(entry.data) if entry.type is EntryType.FILE else 0
            if entry.xattrs:
                info.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in entry.xattrs.items()
                }
            if entry.type is EntryType.SOCKET:
                tar.fileobj.write(_socket_header(info))
                tar.offset += tarfile.BLOCKSIZE
                continue
            tar.addfile(info, io.BytesIO(entry.data) if entry.type is EntryType.FILE else None)
    return out.getvalue()


def tree_entries(root: Path) -> list[TarEntry]:
    """The entries of a directory tree in sorted order, as a container layer would hold them.

    Numeric uid/gid, full modes (set-id, sticky), symlink targets verbatim, second and later names of a
    multiply-linked file as hard links to the first, xattrs from the file system. The root itself is omitted.
    """
    entries: list[TarEntry] = []
    first_name: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            st = path.lstat()
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)}
            common: dict[str, Any] = {
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime": int(st.st_mtime),
                "xattrs": xattrs,
            }
            if stat.S_ISDIR(st.st_mode):
                entries.append(TarEntry(rel + "/", EntryType.DIR, **common))
            elif stat.S_ISLNK(st.st_mode):
                entries.append(TarEntry(rel, EntryType.SYMLINK, linkname=os.readlink(path), **common))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in first_name:
                    entries.append(TarEntry(rel, EntryType.HARDLINK, linkname=first_name[key], **common))
                    continue
                first_name[key] = rel
                entries.append(TarEntry(rel, EntryType.FILE, data=path.read_bytes(), **common))
            else:
                raise ValueError(f"tree_entries: unsupported file type at {path}")
    return entries


def tar_tree(root: Path) -> bytes:
    """A layer tar of the directory tree at ``root`` (see :func:`tree_entries`)."""
    return tar_entries(tree_entries(root))


# -- layers and images ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """A layer blob: ``data`` compressed as ``compression``; ``diff_id`` is the digest of the raw tar."""

    data: bytes
    media_type: str
    diff_id: str
    created_by: str = "amber test layer"

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    @classmethod
    def from_tar(
        cls,
        tar: bytes,
        compression: Compression = Compression.GZIP,
        *,
        created_by: str = "amber test layer",
        docker_media_types: bool = False,
        media_type: str | None = None,
    ) -> Layer:
        if compression is Compression.GZIP:
            data = gzip.compress(tar, compresslevel=6, mtime=0)
        elif compression is Compression.ZSTD:
            data = zstandard.ZstdCompressor(level=3).compress(tar)
        else:
            data = tar
        types = _DOCKER_LAYER_TYPES if docker_media_types else _OCI_LAYER_TYPES
        return cls(data, media_type or types[compression], sha256_digest(tar), created_by)


@dataclass(frozen=True)
class Platform:
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant is not None:
            out["variant"] = self.variant
        if self.os_version is not None:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out


@dataclass
class ImageConfig:
    """The settable parts of an image config (None / empty = not written)."""

    platform: Platform = field(default_factory=Platform)
    user: str | None = None
    env: list[str] = field(
        default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    )
    working_dir: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = field(default_factory=lambda: ["/bin/sh"])
    exposed_ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    healthcheck: dict[str, Any] | None = None
    stop_signal: str | None = None

    def container_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"Env": list(self.env)}
        if self.user is not None:
            cfg["User"] = self.user
        if self.working_dir is not None:
            cfg["WorkingDir"] = self.working_dir
        if self.entrypoint is not None:
            cfg["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            cfg["Cmd"] = list(self.cmd)
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.volumes:
            cfg["Volumes"] = {v: {} for v in self.volumes}
        if self.labels:
            cfg["Labels"] = dict(self.labels)
        if self.healthcheck is not None:
            cfg["Healthcheck"] = dict(self.healthcheck)
        if self.stop_signal is not None:
            cfg["StopSignal"] = self.stop_signal
        return cfg


@dataclass(frozen=True)
class Image:
    """A built image: manifest and config bytes plus its layers, ready to push."""

    manifest: bytes
    manifest_media_type: str
    config: bytes
    config_media_type: str
    layers: tuple[Layer, ...]
    platform: Platform

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


def build_image(
    layers: Sequence[Layer], config: ImageConfig | None = None, *, docker_media_types: bool = False
) -> Image:
    """Image config (rootfs diff_ids, one history entry per layer) and manifest for ``layers``."""
    config = config or ImageConfig()
    platform = config.platform
    config_doc: dict[str, Any] = {
        "created": "2023-11-14T22:13:20Z",
        **platform.to_json(),
        "config": config.container_config(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": layer.created_by} for layer in layers],
    }
    config_bytes = json.dumps(config_doc, sort_keys=True).encode()
    config_type = DOCKER_CONFIG if docker_media_types else OCI_CONFIG
    manifest_type = DOCKER_MANIFEST if docker_media_types else OCI_MANIFEST
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": sha256_digest(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size} for layer in layers],
    }
    manifest = json.dumps(manifest_doc, sort_keys=True).encode()
    return Image(manifest, manifest_type, config_bytes, config_type, tuple(layers), platform)


# -- pushing -----------------------------------------------------------------------------------------------

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class _Pusher:
    """A minimal push client: admin credentials as Basic, or exchanged for a Bearer token per scope."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.client = httpx.Client(base_url=registry.url, timeout=30.0)
        self._token: dict[str, str] = {}

    def close(self) -> None:
        self.client.close()

    def _auth_headers(self, repo: str) -> dict[str, str]:
        if repo in self._token:
            return {"Authorization": f"Bearer {self._token[repo]}"}
        return {}

    def request(self, method: str, url: str, repo: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(
            method, url, headers={**kwargs.pop("headers", {}), **self._auth_headers(repo)}, **kwargs
        )
        if response.status_code != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        creds = self.registry.credentials
        if creds is None:
            raise RuntimeError(f"registry {self.registry.host} wants auth but has no credentials: {challenge}")
        if challenge.lower().startswith("basic"):
            self.client.auth = httpx.BasicAuth(*creds)
        else:
            params = dict(_CHALLENGE_PARAM.findall(challenge))
            reply = httpx.get(
                params["realm"],
                params={"service": params.get("service", ""), "scope": f"repository:{repo}:pull,push"},
                auth=httpx.BasicAuth(*creds),
                timeout=10.0,
            )
            reply.raise_for_status()
            self._token[repo] = reply.json()["token"]
        return self.client.request(
            method, url, headers={**kwargs.pop("headers", {}), **self._auth_headers(repo)}, **kwargs
        )

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256_digest(data)
        if self.request("HEAD", f"/v2/{repo}/blobs/{digest}", repo).status_code == 200:
            return digest
        started = self.request("POST", f"/v2/{repo}/blobs/uploads/", repo)
        if started.status_code != 202:
            raise RuntimeError(f"blob upload start failed: {started.status_code} {started.text}")
        location = started.headers["Location"]
        sep = "&" if "?" in location else "?"
        done = self.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            repo,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if done.status_code != 201:
            raise RuntimeError(f"blob upload failed: {done.status_code} {done.text}")
        return digest

    def push_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        response = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", repo, content=body, headers={"Content-Type": media_type}
        )
        if response.status_code != 201:
            raise RuntimeError(f"manifest push failed: {response.status_code} {response.text}")
        return sha256_digest(body)


def _push_image_blobs(pusher: _Pusher, repo: str, image: Image) -> None:
    for layer in image.layers:
        pusher.push_blob(repo, layer.data)
    pusher.push_blob(repo, image.config)


def push_image(registry: Registry, repo: str, image: Image, tag: str | None = "latest") -> str:
    """Upload ``image`` to ``registry``/``repo`` (tagged ``tag``, or by digest when None); its manifest digest."""
    pusher = _Pusher(registry)
    try:
        _push_image_blobs(pusher, repo, image)
        return pusher.push_manifest(repo, tag or image.digest, image.manifest, image.manifest_media_type)
    finally:
        pusher.close()


def push_index(
    registry: Registry,
    repo: str,
    entries: Sequence[tuple[Image, Platform]],
    tag: str = "latest",
    *,
    docker_media_types: bool = False,
) -> str:
    """Push every image by digest, then an index (or Docker manifest list) over them; the index digest."""
    pusher = _Pusher(registry)
    try:
        manifests = []
        for image, platform in entries:
            _push_image_blobs(pusher, repo, image)
            pusher.push_manifest(repo, image.digest, image.manifest, image.manifest_media_type)
            manifests.append(
                {
                    "mediaType": image.manifest_media_type,
                    "digest": image.digest,
                    "size": len(image.manifest),
                    "platform": platform.to_json(),
                }
            )
        index_type = DOCKER_MANIFEST_LIST if docker_media_types else OCI_INDEX
        body = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": manifests}).encode()
        return pusher.push_manifest(repo, tag, body, index_type)
    finally:
        pusher.close()


@functools.lru_cache(maxsize=8)
def busybox_layer(compression: Compression = Compression.GZIP, *, docker_media_types: bool = False) -> Layer:
    """The busybox-static tree (tests/support/busybox.py) as one layer (built once per process and kind)."""
    with tempfile.TemporaryDirectory(prefix="amber-busybox-") as tmp:
        tree = make_busybox_tree(Path(tmp) / "rootfs")
        return Layer.from_tar(
            tar_tree(tree), compression, created_by="busybox-static rootfs", docker_media_types=docker_media_types
        )


def busybox_image(
    compression: Compression = Compression.GZIP,
    config: ImageConfig | None = None,
    *,
    extra_layers: Sequence[Layer] = (),
    docker_media_types: bool = False,
) -> Image:
    layers = [busybox_layer(compression, docker_media_types=docker_media_types), *extra_layers]
    return build_image(layers, config, docker_media_types=docker_media_types)


def push_busybox_image(
    registry: Registry,
    repo: str = "team/busybox",
    tag: str = "latest",
    *,
    compression: Compression = Compression.GZIP,
    config: ImageConfig | None = None,
    extra_layers: Sequence[Layer] = (),
) -> str:
    """Push a busybox-static image (Cmd ``/bin/sh``) and return ``127.0.0.1:PORT/<repo>:<tag>``."""
    push_image(registry, repo, busybox_image(compression, config, extra_layers=extra_layers), tag)
    return registry.ref(repo, tag)
