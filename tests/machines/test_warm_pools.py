"""Template warm pools through the unmodified SDK and CLI: parked machines are checked out by create, the
controller refills and recycles, and drain/disable/enable/update/delete/rollouts behave as machines-api.md §2.4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nullspace import Machine, Template, TemplateWarmPool
from nullspace.errors import MachineError, NotFoundError

from tests.machines.conftest import Machines, details, run

pytestmark = pytest.mark.vm

NULLSPACE = str(Path(sys.executable).with_name("nullspace"))


def cli(machines: Machines, *args: str) -> str:
    env = {**os.environ, "NULLSPACE_API_URL": machines.server.url, "NULLSPACE_API_KEY": machines.acme_key}
    out = subprocess.run([NULLSPACE, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def checkout_of(machine: Machine) -> tuple[str, bool]:
    result = details(machine).warm_pool_checkout
    assert result is not None
    return result.source, result.hit


def test_pool_checkout_refill_and_states(machines: Machines) -> None:
    pool = TemplateWarmPool.create(machines.template, name="checkout", min_ready=2, max_ready=3, **machines.acme)
    try:
        pool.wait_until_ready(timeout_secs=180)
        assert pool.get_info().status.ready >= 2
        hits = [Machine.create(template=machines.template, warm_pool=pool.id, warm_pool_mode="require",
                               envs={"AT_CHECKOUT": "yes"}, metadata={"n": i}, timeout=120, **machines.acme)
                for i in range(2)]
        for i, machine in enumerate(hits):
            assert checkout_of(machine) == ("ready_instance", True)
            assert "AT_CHECKOUT=yes" in run(machine, "env").stdout
            assert "TEMPLATE_ENV=from-template" in run(machine, "env").stdout
            machine_info = details(machine)
            assert machine_info.metadata == {"n": i} and machine_info.timeout_ms == 120_000
        boot_ids = {run(m, "cat", ["/proc/sys/kernel/random/boot_id"]).stdout for m in hits}
        assert len(boot_ids) == 2, "one parked VM was handed out twice"
        pool.wait_until_ready(timeout_secs=180)  # refilled
        assert pool.get_info().status.claimed == 2
        for machine in hits:
            machine.kill()

        # The CLI sees the same pool.
        listed = json.loads(cli(machines, "template", "warm-pool", "list", "--json"))
        assert pool.id in json.dumps(listed)
        assert json.loads(cli(machines, "template", "warm-pool", "get", pool.id, "--json"))["id"] == pool.id

        # Drain releases every parked VM, then the pool is disabled: require fails after wait_ms, prefer is cold.
        cli(machines, "template", "warm-pool", "drain", pool.id)
        deadline = time.monotonic() + 60
        while (info := pool.get_info()).state.value != "disabled" or info.status.ready:
            assert time.monotonic() < deadline, info
            time.sleep(0.25)
        started = time.monotonic()
        with pytest.raises(MachineError) as unavailable:
            Machine.create(template=machines.template, warm_pool=pool.id, warm_pool_mode="require",
                           warm_pool_wait_ms=1000, **machines.acme)
        assert unavailable.value.code == "warm_pool_unavailable" and time.monotonic() - started >= 1.0
        with Machine.create(template=machines.template, warm_pool=pool.id, warm_pool_mode="prefer",
                            **machines.acme) as cold:
            assert checkout_of(cold) == ("cold_create", False)
        with Machine.create(template=machines.template, warm_pool=pool.id, warm_pool_mode="bypass",
                            **machines.acme) as bypassed:
            assert checkout_of(bypassed) == ("bypassed", False)

        # Enable refills; scaling changes the target; reconcile answers at once.
        cli(machines, "template", "warm-pool", "enable", pool.id)
        pool.wait_until_ready(timeout_secs=180)
        cli(machines, "template", "warm-pool", "scale", pool.id, "--min-ready", "1", "--max-ready", "1")
        info = pool.reconcile()
        assert (info.min_ready, info.max_ready) == (1, 1)
        deadline = time.monotonic() + 60
        while pool.get_info().status.ready > 1:
            assert time.monotonic() < deadline
            time.sleep(0.25)
        pool.disable()
        assert pool.get_info().state.value == "disabled"
        assert not TemplateWarmPool.list(**machines.other)
    finally:
        cli(machines, "template", "warm-pool", "delete", pool.id)
    with pytest.raises(NotFoundError):
        TemplateWarmPool.get(pool.id, **machines.acme)


def test_pool_validation_and_tenancy(machines: Machines) -> None:
    with pytest.raises(MachineError) as bad:
        TemplateWarmPool.create(machines.template, name="bad", min_ready=3, max_ready=1, **machines.acme)
    assert bad.value.code == "invalid_request"
    with pytest.raises(NotFoundError):
        TemplateWarmPool.create("no-such-template", name="x", min_ready=1, max_ready=1, **machines.acme)
    with pytest.raises(MachineError) as untagged:  # track_tag with neither a tag in the ref nor track_tag
        TemplateWarmPool.create(machines.template.split(":")[0], name="t", min_ready=0, max_ready=1,
                                version_policy="track_tag", **machines.acme)
    assert untagged.value.code == "invalid_request"
    pool = TemplateWarmPool.create(machines.template, name="private", min_ready=0, max_ready=1, **machines.acme)
    try:
        with pytest.raises(NotFoundError):
            TemplateWarmPool.get(pool.id, **machines.other)
        with pytest.raises(NotFoundError):
            Machine.create(template=machines.template, warm_pool=pool.id, **machines.other)
    finally:
        pool.delete()


def test_twenty_concurrent_checkouts_never_share_a_vm(machines: Machines) -> None:
    pool = TemplateWarmPool.create(machines.template, name="crowd", min_ready=4, max_ready=4, **machines.acme)
    try:
        pool.wait_until_ready(timeout_secs=240)

        def create(_: int) -> Machine:
            return Machine.create(template=machines.template, warm_pool=pool.id, warm_pool_mode="prefer",
                                  **machines.acme)

        with ThreadPoolExecutor(max_workers=20) as workers:
            created = list(workers.map(create, range(20)))
        try:
            sources = [checkout_of(m)[0] for m in created]
            hits = sources.count("ready_instance")
            assert hits + sources.count("cold_create") == 20 and hits >= 1
            boot_ids = [run(m, "cat", ["/proc/sys/kernel/random/boot_id"]).stdout for m in created]
            assert len(set(boot_ids)) == 20, "a parked VM was handed to two callers"
            assert pool.get_info().status.claimed == hits
        finally:
            for machine in created:
                machine.kill()
    finally:
        pool.delete()


def test_track_tag_pool_rolls_out_a_retagged_template(machines: Machines) -> None:
    name = machines.template.split(":")[0] + "-rollout"
    Template.build(Template.from_template(machines.template.split(":")[0]).run_cmd("echo one > /version"),
                   f"{name}:live", **machines.acme)
    pool = TemplateWarmPool.create(f"{name}:live", name="rollout", min_ready=1, max_ready=1,
                                   version_policy="track_tag", **machines.acme)
    try:
        pool.wait_until_ready(timeout_secs=180)
        first = pool.get_info()
        assert first.rollout_generation == 1
        Template.build(Template.from_template(machines.template.split(":")[0]).run_cmd("echo two > /version"),
                       f"{name}:live", **machines.acme)
        rolled = pool.reconcile()
        assert rolled.rollout_generation == 2
        assert rolled.previous_resolved_template == first.resolved_template
        assert rolled.resolved_template != first.resolved_template
        pool.wait_until_ready(timeout_secs=180)
        with Machine.create(template=f"{name}:live", warm_pool=pool.id, warm_pool_mode="require",
                            warm_pool_wait_ms=30_000, **machines.acme) as machine:
            assert checkout_of(machine) == ("ready_instance", True)
            assert run(machine, "cat", ["/version"]).stdout == "two\n"
    finally:
        pool.delete()
