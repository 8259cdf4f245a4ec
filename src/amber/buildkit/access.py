"""Check, with the caller's own credentials, that the caller may pull an image, before every build.

BuildKit serves an image it pulled once to any later build by digest without asking the registry again, so
without this check a tenant could build ``FROM`` another tenant's private image. Guarantees: one manifest
``HEAD`` (falling back to ``GET``) per image, anonymous / Basic / Bearer (token requested with the caller's
credentials for exactly ``repository:<name>:pull``); any answer but 2xx raises ``ImageAccessDenied`` whose
message names the image and the HTTP status, never the credentials. Plain HTTP only for loopback hosts.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import httpx

from amber.buildkit.dockerfile_rules import DOCKER_HUB, reference_host
from amber.buildkit.session import RegistryCredential

_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class ImageAccessDenied(Exception):
    """The caller may not pull this image (or it does not exist); ``status`` is the registry's answer."""

    def __init__(self, reference: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"cannot pull {reference}: {reason}")
        self.reference = reference
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class _Target:
    host: str
    repository: str
    reference: str  # tag or digest

    @property
    def base_url(self) -> str:
        host = "registry-1.docker.io" if self.host == DOCKER_HUB else self.host
        loopback = host.startswith(("127.", "localhost", "[::1]"))
        return f"{'http' if loopback else 'https'}://{host}"


def _split(reference: str) -> _Target:
    host = reference_host(reference)
    remainder = reference.split("/", 1)[1] if host != DOCKER_HUB or reference.startswith("docker.io/") else reference
    if host == DOCKER_HUB and "/" not in remainder:
        remainder = f"library/{remainder}"
    if "@" in remainder:
        repository, tag = remainder.split("@", 1)
        repository = repository.split(":", 1)[0]
    else:
        name_part = remainder.rsplit("/", 1)
        last = name_part[-1]
        if ":" in last:
            repo_last, tag = last.split(":", 1)
            repository = "/".join([*name_part[:-1], repo_last])
        else:
            repository, tag = remainder, "latest"
    return _Target(host, repository, tag)


async def verify_pull_access(reference: str, credential: RegistryCredential | None, *, timeout: float = 15.0) -> None:
    """Raise ``ImageAccessDenied`` unless ``credential`` (or anonymous access) may read the image manifest."""
    target = _split(reference)
    url = f"{target.base_url}/v2/{target.repository}/manifests/{target.reference}"
    auth = (credential.username, credential.password) if credential is not None else None
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
        try:
            response = await client.head(url, headers={"Accept": _ACCEPT})
            if response.status_code == 401:
                headers = await _authorization(client, response, target, auth)
                response = await client.head(url, headers={"Accept": _ACCEPT, **headers})
            if response.status_code == 405:  # some registries answer HEAD with 405
                response = await client.get(url, headers={"Accept": _ACCEPT})
        except httpx.HTTPError as error:
            raise ImageAccessDenied(reference, f"registry unreachable ({type(error).__name__})") from None
    if response.status_code // 100 == 2:
        return
    reason = {
        401: "authentication failed or credentials missing",
        403: "access denied for these credentials",
        404: "image not found, or not visible to these credentials",
    }.get(response.status_code, f"registry answered HTTP {response.status_code}")
    raise ImageAccessDenied(reference, reason, response.status_code)


async def _authorization(
    client: httpx.AsyncClient, challenge: httpx.Response, target: _Target, auth: tuple[str, str] | None
) -> dict[str, str]:
    header = challenge.headers.get("www-authenticate", "")
    scheme = header.split(" ", 1)[0].lower()
    if scheme == "basic":
        if auth is None:
            return {}
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if scheme != "bearer":
        return {}
    params = dict(_CHALLENGE_PARAM.findall(header))
    realm = params.get("realm")
    if not realm:
        return {}
    query = {"scope": f"repository:{target.repository}:pull"}
    if "service" in params:
        query["service"] = params["service"]
    response = await client.get(realm, params=query, auth=auth) if auth else await client.get(realm, params=query)
    if response.status_code // 100 != 2:
        raise ImageAccessDenied(
            f"{target.host}/{target.repository}",
            f"token server refused the credentials (HTTP {response.status_code})",
            response.status_code,
        )
    body = response.json()
    token = body.get("token") or body.get("access_token")
    return {"Authorization": f"Bearer {token}"} if token else {}
