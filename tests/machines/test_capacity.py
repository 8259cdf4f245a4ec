"""Admission on one host: a machine cap (503 ``capacity_exceeded``), restores bounded by slots with a bounded
queue behind them (429 ``rate_limit_exceeded`` with ``Retry-After``), and unimplemented families as 501."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from nullspace import Machine
from nullspace.errors import NotImplementedError as SdkNotImplementedError
from nullspace.errors import QuotaExceededError

from tests.machines.conftest import Machines

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"AMBER_MAX_MACHINES": "3", "AMBER_MACHINE_RESTORE_SLOTS": "1", "AMBER_MACHINE_QUEUE_LIMIT": "0"}


def test_the_machine_cap_and_the_start_queue(machines: Machines) -> None:
    headers = {"Authorization": f"Bearer {machines.acme_key}"}
    body = {"template": machines.template, "vcpus": 2, "memory_mb": 512}
    with httpx.Client(base_url=machines.server.url, timeout=120, headers=headers) as http:

        def create(_: int) -> httpx.Response:
            return http.post("/v1/machines", json=body, headers={"Idempotency-Key": os.urandom(8).hex()})

        with ThreadPoolExecutor(3) as workers:
            answers = list(workers.map(create, range(3)))
        created = [a.json()["id"] for a in answers if a.status_code == 201]
        busy = [a for a in answers if a.status_code == 429]
        assert created and len(created) + len(busy) == 3, [a.text for a in answers]
        for answer in busy:
            assert answer.json()["code"] == "rate_limit_exceeded" and int(answer.headers["Retry-After"]) >= 1
        while len(created) < 3:
            answer = create(0)
            assert answer.status_code in (201, 429)
            if answer.status_code == 201:
                created.append(answer.json()["id"])
        full = create(0)
        assert full.status_code == 503 and full.json()["code"] == "capacity_exceeded"
        with pytest.raises(QuotaExceededError):
            Machine.create(template=machines.template, **machines.acme)
        http.post(f"/v1/machines/{created[0]}/hibernate")  # a paused machine holds no slot
        assert create(0).status_code == 201
        for machine_id in created:
            http.delete(f"/v1/machines/{machine_id}")
        for listed in http.get("/v1/machines").json()["items"]:
            http.delete(f"/v1/machines/{listed['id']}")


def test_families_this_server_does_not_offer_are_501(machines: Machines) -> None:
    with Machine.create(template=machines.template, **machines.acme) as machine:
        with pytest.raises(SdkNotImplementedError):
            machine.get_metrics()
        headers = {"Authorization": f"Bearer {machines.acme_key}"}
        with httpx.Client(base_url=machines.server.url, timeout=60, headers=headers) as http:
            mid = machine.id
            for method, path in [("GET", f"/v1/machines/{mid}/pty"), ("POST", f"/v1/machines/{mid}/git/clone"),
                                 ("POST", f"/v1/machines/{mid}/code/execute"), ("POST", f"/v1/machines/{mid}/uploads"),
                                 ("GET", "/v1/volumes"), ("GET", "/v1/lifecycle/events")]:
                answer = http.request(method, path, json={})
                assert answer.status_code == 501 and answer.json()["code"] == "not_implemented", (path, answer.text)
            assert http.get("/v1/machines/mch_0000/pty").status_code == 404
            snapshot = machine.create_snapshot()
            answer = http.get(f"/v1/snapshots/{snapshot.id}/lifecycle")
            assert answer.status_code == 501 and answer.json()["code"] == "not_implemented", answer.text
            assert http.get("/v1/snapshots/snap_0000/lifecycle").status_code == 404
            assert http.delete(f"/v1/snapshots/{snapshot.id}").status_code == 204
