"""Per-key rate limiting (§0.7): ``429 rate_limit_exceeded`` with ``Retry-After``, per key, and the SDK's
automatic retry honouring it. The limiter does not depend on the database, so one SQLite server suffices."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nullspace import Template

from amber.api.ratelimit import RateLimiter, retry_after_header
from tests.api.conftest import store_keys
from tests.support.server import AmberServer, running_server


def test_token_bucket() -> None:
    now = [100.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [None, None, None]
    wait = limiter.acquire("a")
    assert wait is not None and wait == pytest.approx(0.5)
    assert limiter.acquire("b") is None  # buckets are per key
    now[0] += 0.5
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") is not None
    now[0] += 60  # refills up to the burst, not beyond
    assert [limiter.acquire("a") for _ in range(4)][-1] is not None
    assert RateLimiter(0, 1).acquire("a") is None  # 0 disables
    assert retry_after_header(0.01) == "1" and retry_after_header(1.2) == "2"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AmberServer, list[str]]]:
    data_dir: Path = tmp_path_factory.mktemp("amber-ratelimit")
    url = f"sqlite:///{data_dir / 'amber.db'}"
    env = {"AMBER_RATE_LIMIT_PER_SEC": "1", "AMBER_RATE_LIMIT_BURST": "3"}
    with running_server(data_dir, url, workers=0, env=env) as server:
        yield server, store_keys(url, ["acme", "other", "sdk"])  # a fresh key per test


def test_over_the_limit_is_429_with_retry_after(limited: tuple[AmberServer, list[str]]) -> None:
    server, (acme_key, other_key, _) = limited
    with server.client(acme_key) as acme, server.client(other_key) as other:
        assert [acme.get("/v1/templates").status_code for _ in range(3)] == [200, 200, 200]
        resp = acme.get("/v1/templates")
        assert resp.status_code == 429, resp.text
        body = resp.json()
        assert body["code"] == "rate_limit_exceeded"
        assert "rate limit" in body["error"]
        assert body["request_id"] == resp.headers["x-request-id"]
        assert "error_detail" not in body
        assert int(resp.headers["Retry-After"]) >= 1
        assert other.get("/v1/templates").status_code == 200  # another key has its own bucket
        time.sleep(float(resp.headers["Retry-After"]) + 0.1)
        assert acme.get("/v1/templates").status_code == 200


def test_sdk_retries_after_a_429(limited: tuple[AmberServer, list[str]]) -> None:
    server, (_, _, sdk_key) = limited
    with server.client(sdk_key) as acme:
        while acme.get("/v1/templates").status_code != 429:  # drain the bucket
            pass
    started = time.monotonic()
    assert Template.list(api_key=sdk_key, base_url=server.url) == []  # succeeds after sleeping Retry-After
    assert time.monotonic() - started >= 0.9
