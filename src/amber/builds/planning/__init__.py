"""Pure build planning: request → steps, Dockerfile text, digests, cache keys, runtime defaults, plan/validate.

Nothing here touches disks, processes or VMs. ``plan_request``/``plan_json`` and ``validate_request`` serve the
``plan`` and ``validate`` endpoints; the native pipeline builds on ``plan_steps``, ``runtime_defaults`` and the
cache-key functions.
"""

from amber.builds.planning.plan import plan_json, plan_request, validate_request

__all__ = ["plan_json", "plan_request", "validate_request"]
