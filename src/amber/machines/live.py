"""A machine whose VM runs in this process: the VM, its process table, what its commands run as, its activity.

``transition`` serialises what changes the VM (hibernate, destroy, snapshot); requests that only use the agent
(exec, files, processes) run concurrently and are counted in ``inflight`` so a transition can say what it cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amber.machines.processes import Process, ProcessTable, exit_code_of
from amber.vm import AgentClient, Job, MicroVM


@dataclass(frozen=True)
class JobCallbacks:
    on_start: Callable[[Job], None]
    on_stdout: Callable[[bytes], None]
    on_stderr: Callable[[bytes], None]
    on_exit: Callable[[Job], None]


@dataclass
class LiveMachine:
    id: str
    namespace_id: str
    vm: MicroVM
    user: str | None  # the template's default user ("root" when unset)
    workdir: str | None  # the template's default workdir
    cwd: str | None  # the machine's own default (create ``cwd``)
    memory_mb: int
    processes: ProcessTable = field(default_factory=ProcessTable)
    transition: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_active: float = field(default_factory=time.time)  # wall clock, seconds
    inactivity_timeout_ms: int | None = None
    timeout_at: float | None = None  # wall clock, seconds
    files_base: str | None = None  # where relative file paths resolve without a cwd (see machines.files)
    stopping: bool = False  # a transition is ending this VM: new requests wait for it

    @property
    def agent(self) -> AgentClient:
        return self.vm.agent

    def touch(self) -> None:
        self.last_active = time.time()

    def command_cwd(self, requested: str | None) -> str:
        """exec ``cwd`` > machine ``cwd`` > template workdir > ``/``."""
        return requested or self.cwd or self.workdir or "/"

    def process_state(self) -> dict[str, Any]:
        """What a snapshot keeps of the process table (``processes.json``), taken while the guest is stopped:
        the agent connection is drained first, so the logs hold exactly what the guest sent before the pause."""
        self.vm.agent.wait_drained()
        return {"next_request_id": self.vm.agent.next_request_id, "processes": self.processes.to_json()}

    def job_callbacks(self, process: Process) -> JobCallbacks:
        """Callbacks that feed a job's life into ``process``: registered in the table once it runs, output into
        its logs, its exit recorded — except when the connection ends because this VM is being stopped on
        purpose (hibernate, snapshot): the command is then still running in the guest."""

        def on_start(job: Job) -> None:
            process.pid, process.request_id = job.pid or 0, job.request_id
            self.processes.add(process)

        def on_exit(job: Job) -> None:
            if job.result is not None:
                process.finish(exit_code_of(job.result))
            elif not self.stopping:
                process.finish(-1)  # lost with the VM

        return JobCallbacks(on_start=on_start, on_stdout=lambda data: process.add_output("stdout", data),
                            on_stderr=lambda data: process.add_output("stderr", data), on_exit=on_exit)
