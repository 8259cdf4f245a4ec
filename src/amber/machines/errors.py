"""What a machine operation can refuse, each with the contract's HTTP status and code (machines-api.md §5.12).

Callers catch ``MachineProblem``; the API renders ``status``/``code``/``message`` as the flat ErrorResponse.
Messages name machines, paths and fields, never env values.
"""

from __future__ import annotations


class MachineProblem(Exception):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class MachineNotFound(MachineProblem):
    """No such machine for this caller (another namespace's machine is not found either)."""

    status = 404
    code = "machine_not_found"


class NotFoundProblem(MachineProblem):
    """A template, snapshot, process or file that does not exist (``code`` says which)."""

    status = 404
    code = "not_found"


class NotReady(MachineProblem):
    """The machine cannot do this in its state (paused without auto_resume, destroyed, lost)."""

    status = 409
    code = "machine_not_ready"


class TransitionInProgress(MachineProblem):
    """The same create (idempotency key) or another transition is still running; retry later."""

    status = 409
    code = "transition_in_progress"


class ConflictProblem(MachineProblem):
    status = 409
    code = "transition_conflict"


class Busy(MachineProblem):
    """The start queue is full: 429 with ``Retry-After``."""

    status = 429
    code = "rate_limit_exceeded"


class CapacityExceeded(MachineProblem):
    """This host runs as many machines (or as much guest memory) as it may."""

    status = 503
    code = "capacity_exceeded"


class Unavailable(MachineProblem):
    status = 503
    code = "feature_unavailable"


class ExecFailed(MachineProblem):
    """The agent did not answer (machine restoring, gone, or wedged)."""

    status = 502
    code = "exec_failed"


class ExecTimeout(MachineProblem):
    status = 504
    code = "exec_timeout"


class FileProblem(MachineProblem):
    """A file operation the guest refused (permission, not a directory, …)."""

    status = 400
    code = "file_error"


class NotImplementedProblem(MachineProblem):
    status = 501
    code = "not_implemented"
