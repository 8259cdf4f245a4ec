"""Machine tests: the unmodified ``nullspace-sdk==1.0.3`` (and its CLI) against a real ``amber serve`` whose
machines are real QEMU VMs restored from a template built by that server from a busybox image.

One server and one template per module (a template build costs a few seconds under TCG; a machine restore a
fraction of one). Every test creates its own machines and destroys them; the module checks no VM is left.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from nullspace import Machine, Template, wait_for_port
from nullspace.types import BackgroundCommand, CommandResult, MachineInfo

from tests.contract.conftest import Conn, data_dir_with_guest, leftover_vms
from tests.support.images import push_busybox_image
from tests.support.registry import Registry, running_registry
from tests.support.server import AmberServer, running_server

# A template whose start command runs a service (busybox httpd on 8080) and leaves a marker of what env it saw.
START_CMD = "mkdir -p /srv/www && echo service-page > /srv/www/index.html && env > /tmp/start-env && " \
            "httpd -f -p 8080 -h /srv/www"


@dataclass
class Machines:
    """A running server, a built template (``template``, 1 vCPU / 512 MiB) and two namespaces' keys."""

    server: AmberServer
    template: str
    acme_key: str
    other_key: str

    @property
    def acme(self) -> Conn:
        return {"api_key": self.acme_key, "base_url": self.server.url}

    @property
    def other(self) -> Conn:
        return {"api_key": self.other_key, "base_url": self.server.url}


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with running_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module")
def machines(
    registry: Registry, server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Machines]:
    data_dir = data_dir_with_guest(tmp_path_factory)
    base = push_busybox_image(registry)
    with running_server(data_dir, workers=1, env=server_env) as server:
        acme = server.create_key("acme")
        name = f"svc-{uuid.uuid4().hex[:6]}"
        template = Template.from_image(base).run_cmd("mkdir -p /workspace /data && echo built > /data/marker") \
            .set_runtime_envs({"TEMPLATE_ENV": "from-template"}).set_workdir("/workspace") \
            .set_start_cmd(START_CMD, wait_for_port(8080))
        Template.build(template, f"{name}:stable", api_key=acme, base_url=server.url)
        yield Machines(server, f"{name}:stable", acme, server.create_key("other"))
    assert not leftover_vms(data_dir), "VM run directories left behind"


def run(machine: Machine, cmd: str, args: list[str] | None = None, **kwargs: Any) -> CommandResult:
    """``machine.commands.run`` of a command that runs to its end (typed)."""
    result = machine.commands.run(cmd, args, **kwargs)
    assert isinstance(result, CommandResult)
    return result


def start(machine: Machine, cmd: str, args: list[str] | None = None, **kwargs: Any) -> BackgroundCommand:
    """``machine.commands.run(..., background=True)`` (typed)."""
    job = machine.commands.run(cmd, args, background=True, **kwargs)
    assert isinstance(job, BackgroundCommand)
    return job


def info_of(machine_id: str, conn: Conn) -> MachineInfo:
    info = Machine.get_info_by_id(machine_id, **conn)
    assert isinstance(info, MachineInfo)
    return info


def details(machine: Machine) -> MachineInfo:
    """``machine.get_info()`` (typed)."""
    info = machine.get_info()
    assert isinstance(info, MachineInfo)
    return info


def listed(conn: Conn, **query: Any) -> set[str]:
    """Ids ``Machine.list(**query)`` returns."""
    out = set()
    for item in Machine.list(**query, **conn):
        assert isinstance(item, MachineInfo)
        out.add(item.id)
    return out
