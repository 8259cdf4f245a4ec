"""``build_envs`` values are build-only (R56, issue 11): the stored plan and definition hold their names only;
the plan executed gets the values back from the accepting process's memory."""

from __future__ import annotations

import json

from amber.builds.executor import BuildInputs
from amber.builds.planning import BuildPlan, make_plan
from amber.contract.request import persistable_request
from amber.contract.validation import validate_create_request

VALUE = "build-only-value-7f3a"


def test_stored_plans_and_definitions_hold_no_build_env_value() -> None:
    for body in ({"base_image": "127.0.0.1:1/x:1", "steps": [{"action": "run", "command": "true"}],
                  "build_envs": {"MYENV": VALUE, "PLAIN": "two words"}},
                 {"dockerfile": "FROM 127.0.0.1:1/x:1\nRUN true\n", "build_envs": {"MYENV": VALUE}}):  # fmt: skip
        req = validate_create_request(body)
        plan = make_plan(req)
        stored = plan.stored()
        text = json.dumps(stored.to_json()) + json.dumps(persistable_request(req))
        assert VALUE not in text and "two words" not in text
        assert [k for k, _ in stored.build_envs] == list(req.build_envs or {})
        back = BuildPlan.from_json(json.loads(json.dumps(stored.to_json()))).with_build_envs(req.build_envs or {})
        assert back == plan  # what the worker executes is the plan made at accept
        inputs = BuildInputs.of(req)
        assert inputs.needed and VALUE not in repr(inputs)  # pinned to the accepting process, never printed
