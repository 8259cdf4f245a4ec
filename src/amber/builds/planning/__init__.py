"""Pure build planning: request → ``BuildPlan`` (steps, Dockerfile text, digests, cache-key inputs, runtime
settings, VM shape), cache keys, runtime defaults, plan/validate rendering, eviction.

Nothing here touches disks, processes or VMs. ``build_plan.make_plan`` decides a build once, at accept; the
pipeline executes the stored plan; ``plan_json``/``validate_request`` render the same plan for the ``plan`` and
``validate`` endpoints.
"""

from amber.builds.planning.build_plan import BaseTemplate, BuildPlan, make_plan
from amber.builds.planning.plan import PlanInputs, plan_json, plan_request, render_plan, validate_request

__all__ = [
    "BaseTemplate",
    "BuildPlan",
    "PlanInputs",
    "make_plan",
    "plan_json",
    "plan_request",
    "render_plan",
    "validate_request",
]
