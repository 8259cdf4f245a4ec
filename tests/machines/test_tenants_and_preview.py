"""Preview URLs (a real headless Chromium reads the guest's page through Amber) and tenant isolation: another
namespace's key gets 404 on every machine endpoint, the WebSocket and the preview host."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse

import httpx
import pytest
from nullspace import Machine
from nullspace.types import PreviewGrantInfo

from tests.machines.conftest import Machines, details, start

pytestmark = pytest.mark.vm

CHROMIUM = "/usr/bin/chromium"


def chromium_dom(url: str) -> str:
    """The rendered DOM of ``url`` in headless Chromium (Debian's), as a person's browser would see it."""
    assert shutil.which(CHROMIUM), "Debian's chromium is missing: scripts/setup.sh installs it"
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=False)
    return out.stdout


def test_preview_url_serves_the_guest_page_in_a_browser(machines: Machines) -> None:
    with Machine.create(template=machines.template, **machines.acme) as machine:
        url = machine.get_url(8080)
        parsed = urllib.parse.urlsplit(url)
        assert parsed.hostname == f"8080-{machine.id}.localhost"
        assert "service-page" in chromium_dom(url)

        direct = f"http://127.0.0.1:{machines.server.port}/"
        host = {"Host": parsed.netloc}
        with httpx.Client(timeout=30) as http:
            followed = http.get(url.replace(f"{parsed.hostname}:{parsed.port}", f"127.0.0.1:{parsed.port}"),
                                headers=host, follow_redirects=False)
            assert followed.status_code == 302 and "nullspace_token" not in followed.headers["location"]
            cookie = followed.headers["set-cookie"].split(";")[0]
            http.cookies.clear()  # every request below says exactly what it carries
            page = http.get(direct, headers={**host, "Cookie": cookie})
            assert page.status_code == 200 and page.text == "service-page\n"
            assert http.get(direct, headers=host).status_code == 401
            other = http.get(direct, headers={**host, "Authorization": f"Bearer {machines.other_key}"})
            assert other.status_code == 404
            owner = http.get(direct, headers={**host, "Authorization": f"Bearer {machines.acme_key}"})
            assert owner.status_code == 200 and owner.text == "service-page\n"
            closed = http.get(direct, headers={"Host": f"9999-{machine.id}.localhost:{parsed.port}",
                                               "Authorization": f"Bearer {machines.acme_key}"})
            assert closed.status_code == 502 and "9999" in closed.text
            grant = machine.get_preview_url(8080).grant
            assert isinstance(grant, PreviewGrantInfo)
            assert grant.machine_id == machine.id and grant.port == 8080

        with Machine.create(template=machines.template, **machines.acme) as sibling, httpx.Client(timeout=30) as http:
            sibling_query = urllib.parse.urlsplit(sibling.get_url(8080)).query
            stolen = http.get(f"{direct}?{sibling_query}", headers=host)
            assert stolen.status_code == 404, "another machine's token opened this machine"


def test_wait_for_preview_reports_whether_the_port_serves(machines: Machines) -> None:
    """``wait_for_preview`` probes the guest port from inside the machine until it serves or the time is up;
    not ready is an answer with the reason, a bad probe is a 400, another namespace gets 404."""
    with Machine.create(template=machines.template, **machines.acme) as machine:
        ready = machine.wait_for_preview(8080)
        assert ready.ready and ready.service_ready and ready.route_ready and ready.attempts >= 1
        assert (ready.machine_id, ready.port, ready.kind, ready.code) == (machine.id, 8080, "tcp", None)
        page = machine.wait_for_preview(8080, kind="http", path="/")
        assert page.ready and page.path == "/"
        missing = machine.wait_for_preview(8080, kind="http", path="/no-such-page", timeout_secs=1, interval_ms=200)
        assert not missing.ready and missing.route_ready and "404" in (missing.error or ""), missing

        closed = machine.wait_for_preview(9090, timeout_secs=1, interval_ms=200)
        assert not closed.ready and not closed.service_ready and closed.route_ready
        assert closed.code == "preview_service_not_ready" and closed.attempts >= 2 and closed.suggested_action
        assert 800 <= closed.elapsed_ms < 10_000, closed

        start(machine, "sleep 2; exec httpd -f -p 9090 -h /tmp", shell=True)  # a service that comes up later
        later = machine.wait_for_preview(9090, timeout_secs=30, interval_ms=200)
        assert later.ready and later.attempts > 1, later

        with httpx.Client(timeout=30) as http:
            readiness = f"{machines.server.url}/v1/machines/{machine.id}/ports/8080/readiness"
            for body, field in (({"kind": "udp"}, "kind"), ({"timeout_secs": 3600}, "timeout_secs"),
                                ({"kind": "http", "path": "no-slash"}, "path")):
                refused = http.post(readiness, json=body, headers={"Authorization": f"Bearer {machines.acme_key}"})
                assert refused.status_code == 400 and field in refused.text, refused.text
            other = http.post(f"{machines.server.url}/v1/machines/{machine.id}/ports/8080/readiness", json={},
                              headers={"Authorization": f"Bearer {machines.other_key}"})
            assert other.status_code == 404, other.text


def test_another_namespace_sees_404_everywhere(machines: Machines) -> None:
    with Machine.create(template=machines.template, **machines.acme) as machine:
        machine.files.write("/workspace/private.txt", "acme only")
        job = start(machine, "sleep 300", shell=True)
        mid = machine.id
        calls = [
            ("GET", f"/v1/machines/{mid}", None), ("DELETE", f"/v1/machines/{mid}", None),
            ("POST", f"/v1/machines/{mid}/exec", {"command": "true"}),
            ("GET", f"/v1/machines/{mid}/processes", None),
            ("GET", f"/v1/machines/{mid}/processes/{job.pid}/logs", None),
            ("POST", f"/v1/machines/{mid}/processes/{job.pid}/kill", None),
            ("POST", f"/v1/machines/{mid}/processes/{job.pid}/stdin", {"data": "x"}),
            ("POST", f"/v1/machines/{mid}/timeout", {"timeout_ms": 1000}),
            ("POST", f"/v1/machines/{mid}/hibernate", None), ("POST", f"/v1/machines/{mid}/resume", None),
            ("POST", f"/v1/machines/{mid}/host", {"port": 8080}),
            ("GET", f"/v1/machines/{mid}/ports/8080/preview-url", None),
            ("POST", f"/v1/machines/{mid}/files/read", {"path": "/workspace/private.txt", "user": None}),
            ("POST", f"/v1/machines/{mid}/files/write", {"path": "/workspace/x", "content": "x", "user": None}),
            ("POST", f"/v1/machines/{mid}/files/info", {"path": "/workspace", "user": None}),
            ("POST", f"/v1/machines/{mid}/files/exists", {"path": "/workspace", "user": None}),
            ("POST", f"/v1/machines/{mid}/files/mkdir", {"path": "/workspace/d", "user": None}),
            ("POST", f"/v1/machines/{mid}/files/remove", {"path": "/workspace/private.txt", "user": None}),
            ("POST", f"/v1/machines/{mid}/files/rename", {"old_path": "/a", "new_path": "/b", "user": None}),
            ("GET", f"/v1/machines/{mid}/files?path=/workspace", None),
            ("GET", f"/v1/machines/{mid}/file?path=/workspace/private.txt", None),
            ("PUT", f"/v1/machines/{mid}/file?path=/workspace/x", b"data"),
            ("GET", f"/v1/machines/{mid}/metrics", None), ("POST", f"/v1/machines/{mid}/pty", None),
            ("POST", f"/v1/machines/{mid}/files/find", {"path": "/", "pattern": "x"}),
        ]
        with httpx.Client(base_url=machines.server.url, timeout=60,
                          headers={"Authorization": f"Bearer {machines.other_key}"}) as http:
            for method, path, body in calls:
                if isinstance(body, bytes):
                    answer = http.request(method, path, content=body)
                else:
                    answer = http.request(method, path, json=body)
                assert answer.status_code == 404, (method, path, answer.status_code, answer.text)
                assert answer.json()["code"] in ("machine_not_found", "not_found"), (method, path)
                assert "acme only" not in answer.text
        ws_url = machines.server.url.replace("http://", "ws://") + f"/v1/machines/{mid}/ws?channel=exec"
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url, additional_headers={"Authorization": f"Bearer {machines.other_key}"})
        assert refused.value.response.status_code == 404
        assert json.loads(refused.value.response.body or b"{}")["code"] == "machine_not_found"
        # Nothing the other namespace did reached the machine.
        assert machine.files.read("/workspace/private.txt") == "acme only"
        assert any(p.pid == job.pid and p.running for p in machine.commands.list())
        assert details(machine).status.value == "running"
