"""Schemathesis against the API's own OpenAPI document (what `GET /swagger` serves), in-process on
moto: every operation with generated valid and invalid input, then stateful sequences following the
document's links. No input may produce a 5xx, and every response must be documented: its status
code, content type and body schema."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, strategies
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.gateway import api_gateway
from tests.reliability.test_tenant_isolation import template_routes
from tests.reliability.world import ADMIN, World

EXAMPLES_PER_OPERATION = 50
SEQUENCES = 20  # stateful: sequences of calls, each from a fresh world
STEPS_PER_SEQUENCE = 10
SEED = 20_260_801
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Routes only an administrator may call; every other operation is called as the tenant "alice".
ADMIN_OPERATIONS = {
    "POST /api/users",
    "PUT /api/users/{user_id}/services",
    "POST /api/services",
    "PATCH /api/services/{service_id}",
    "POST /api/services/{service_id}/check",
    "POST /api/users/{user_id}/resume-sending",
    "POST /api/services/{service_id}/resume-sending",
    "POST /api/scheduler/start",
    "POST /api/scheduler/stop",
}
TENANT = "alice"


def openapi_document() -> dict[str, Any]:
    from api_handler import app  # the handler module is where the routers are included

    document: dict[str, Any] = json.loads(app.get_openapi_json_schema())
    return document


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {"deterministic": True, "max-examples": EXAMPLES_PER_OPERATION, "database": "none"},
    }
)
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)
schema.app = api_gateway()

# The populated world of the running test: hooks read it to put real ids into generated requests.
_current: dict[str, World] = {}
examples_run: Counter[str] = Counter()
links_followed: Counter[tuple[str, int]] = Counter()


def caller_of(case: schemathesis.Case) -> str:
    if case.operation.label == "GET /api/users/{user_id}":  # a user reads itself; the admin, anyone
        return TENANT if (case.path_parameters or {}).get("user_id") == TENANT else ADMIN
    return ADMIN if case.operation.label in ADMIN_OPERATIONS else TENANT


def _seeded_path_values(world: World) -> dict[str, str]:
    tenant = world.tenants[TENANT]
    return {
        "user_id": TENANT,
        "service_id": world.service_id,
        "template_id": tenant.template_id,
        "task_id": tenant.task_id,
    }


@schema.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any]) -> Any:
    """Half the time, ids of things that exist: random ids alone only ever reach the 404."""
    world = _current.get("world")
    if world is None or not path_parameters:
        return strategies.just(path_parameters)
    seeded = {name: value for name, value in _seeded_path_values(world).items() if name in path_parameters}
    return strategies.sampled_from([path_parameters, {**path_parameters, **seeded}])


@schema.hook
def flatmap_query(context: schemathesis.HookContext, query: dict[str, Any]) -> Any:
    """The unsubscribe link of a real recipient, besides generated (forged) tokens."""
    world = _current.get("world")
    operation = context.operation
    if world is None or operation is None or operation.path != "/unsubscribe" or not isinstance(query, dict):
        return strategies.just(query)
    return strategies.sampled_from([query, {**query, "token": world.tenants[TENANT].unsubscribe_token}])


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> Any:
    """Bodies that name the tenant's sender, templates and contacts, besides the generated ones."""
    world = _current.get("world")
    operation = context.operation
    if world is None or operation is None or not isinstance(body, dict):
        return strategies.just(body)
    tenant = world.tenants[TENANT]
    if operation.label == "POST /api/tasks":
        real = {"sender_id": tenant.sender_id, "templates": [tenant.template_id], "contacts": tenant.contact_ids}
        return strategies.sampled_from([body, {**body, **real}])
    if operation.label == "POST /api/templates/{template_id}/preview" and "contact_id" in body:
        return strategies.sampled_from([body, {**body, "contact_id": tenant.contact_ids[0]}])
    if operation.label == "PUT /api/users/{user_id}/services":
        return strategies.sampled_from([body, {"service_ids": [world.service_id]}])
    return strategies.just(body)


def auth_headers(world: World, case: schemathesis.Case) -> dict[str, str]:
    return {"Authorization": f"Bearer {world.token(caller_of(case))}"}


def test_the_document_gives_every_route_its_answers_in_the_api_shape() -> None:
    """Each operation documents a success and its errors as ErrorBody (not Powertools' 422
    HTTPValidationError, which the API never sends), and is a route of template.yaml (else API
    Gateway would never pass it to the function)."""
    document = openapi_document()
    routes = {(method, path) for method, path in template_routes() if path != "/swagger"}
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert operations == routes, (operations - routes, routes - operations)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            statuses = [int(status) for status in operation["responses"]]
            assert any(200 <= status < 300 for status in statuses), (method, path, statuses)
            assert any(400 <= status < 500 for status in statuses), (method, path, statuses)
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema_ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert schema_ref == "#/components/schemas/ErrorBody", (method, path, status, schema_ref)


@pytest.fixture
def current_world(world: World) -> Any:
    _current["world"] = world
    yield world
    _current.clear()


@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
    max_examples=EXAMPLES_PER_OPERATION,
)
def test_every_operation_answers_as_documented(case: schemathesis.Case, current_world: World) -> None:
    examples_run[case.operation.label] += 1
    response = case.call(headers=auth_headers(current_world, case))
    case.validate_response(response, checks=CHECKS)


class ApiWorkflow(schema.as_state_machine()):  # type: ignore[misc]
    """Sequences of calls along the document's links (create a template, then preview it; create a
    task, then read, pause, resume or cancel it), each reply checked as above. Every sequence starts
    from the same freshly populated world, so a replayed sequence meets the same answers."""

    new_world: Callable[[], World]
    planner: Any

    def setup(self) -> None:
        _current["world"] = self.new_world()

    def after_call(self, response: schemathesis.Response, case: schemathesis.Case) -> None:
        if case.operation.label == "POST /api/tasks" and response.status_code == 201:
            self.planner.drain()  # as the planner queue's trigger would: the new task gets planned

    def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
        return {"headers": auth_headers(_current["world"], case)}

    def step(self, input: Any) -> Any:
        output = super().step(input)
        if input.transition is not None and input.is_applied:
            links_followed[(input.transition.id, output.response.status_code)] += 1
        return output

    def validate_response(self, response: schemathesis.Response, case: schemathesis.Case, *_: Any, **__: Any) -> None:
        examples_run[f"stateful {case.operation.label}"] += 1
        case.validate_response(response, checks=CHECKS)


def test_linked_sequences_answer_as_documented(new_world: Callable[[], World], planner: Any) -> None:
    ApiWorkflow.new_world = staticmethod(new_world)
    ApiWorkflow.planner = planner
    ApiWorkflow.run(
        settings=hypothesis.settings(
            max_examples=SEQUENCES,
            stateful_step_count=STEPS_PER_SEQUENCE,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    # The sequences did follow links: a value from one reply reached another call, which succeeded.
    assert any(200 <= status < 300 for (_, status) in links_followed), links_followed
