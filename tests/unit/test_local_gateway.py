"""The local API Gateway: routes and authorisation from template.yaml, proxy events in, proxy
responses out, and Cognito's part (bearer tokens) played by POST /local/token."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from local_runner.http_api import LocalApiGateway, TokenIssuer, routes_from_template
from local_runner.template import load_template


class RecordingInvoke:
    """Stands in for the function host: records events, answers with a canned proxy response."""

    def __init__(self, reply: Any = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.reply = reply if reply is not None else {"statusCode": 200, "headers": {}, "body": "{}"}

    def __call__(self, function: str, event: dict[str, Any]) -> Any:
        self.events.append((function, event))
        return self.reply


@pytest.fixture
def gateway() -> Any:
    invoke = RecordingInvoke()
    server = LocalApiGateway(load_template(), invoke, port=0)
    yield server, invoke
    server.stop()


def _token(server: LocalApiGateway, sub: str, groups: list[str]) -> str:
    status, _, body = server.handle(
        "POST", "/local/token", {}, json.dumps({"sub": sub, "groups": groups}).encode(), "1.2.3.4"
    )
    assert status == 200
    token: str = json.loads(body)["token"]
    return token


def test_every_api_route_of_the_template_is_served_and_public_ones_need_no_token() -> None:
    routes = {(route.method, route.resource): route for route in routes_from_template(load_template())}
    assert ("GET", "/api/tasks/{task_id}") in routes
    assert routes[("POST", "/unsubscribe")].needs_token is False
    assert routes[("POST", "/api/tasks")].needs_token is True
    assert {route.function for route in routes.values()} == {"ApiFunction"}


def test_a_request_becomes_a_rest_proxy_event_with_the_callers_claims(gateway: Any) -> None:
    server, invoke = gateway
    token = _token(server, "alice", ["admins"])

    server.handle(
        "POST",
        "/api/scheduler/tasks/task_1/pause?reason=x&reason=y",
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        b'{"a": 1}',
        "10.0.0.7",
    )

    [(function, event)] = invoke.events
    assert function == "ApiFunction"
    assert event["resource"] == "/api/scheduler/tasks/{task_id}/pause"
    assert event["path"] == "/api/scheduler/tasks/task_1/pause"
    assert event["pathParameters"] == {"task_id": "task_1"}
    assert event["multiValueQueryStringParameters"] == {"reason": ["x", "y"]}
    assert event["queryStringParameters"] == {"reason": "y"}
    assert event["body"] == '{"a": 1}'
    assert event["requestContext"]["identity"]["sourceIp"] == "10.0.0.7"
    assert event["requestContext"]["authorizer"]["claims"] == {
        "sub": "alice",
        "token_use": "id",
        "cognito:groups": "admins",
    }


def test_missing_forged_or_tampered_tokens_are_401_before_the_function_runs(gateway: Any) -> None:
    server, invoke = gateway
    token = _token(server, "alice", [])
    prefix, _payload, signature = token.split(".")
    admin_payload = base64.urlsafe_b64encode(json.dumps({"sub": "alice", "cognito:groups": "admins"}).encode())
    tampered = f"{prefix}.{admin_payload.decode().rstrip('=')}.{signature}"
    foreign = TokenIssuer().issue("alice", [])  # signed with another runner's key

    for authorization in (None, "Bearer", f"Basic {token}", f"Bearer {tampered}", f"Bearer {foreign}"):
        headers = {"Authorization": authorization} if authorization else {}
        status, _, body = server.handle("GET", "/api/tasks", headers, b"", "127.0.0.1")
        assert (status, json.loads(body)) == (401, {"message": "Unauthorized"}), authorization
    assert invoke.events == []


def test_public_routes_run_without_a_token(gateway: Any) -> None:
    server, invoke = gateway
    status, _, _ = server.handle("POST", "/unsubscribe?token=abc", {}, b"", "127.0.0.1")
    assert status == 200
    [(_, event)] = invoke.events
    assert "authorizer" not in event["requestContext"]


def test_unrouted_paths_and_methods_are_api_gateways_403(gateway: Any) -> None:
    server, invoke = gateway
    token = _token(server, "alice", [])
    for method, path in (("GET", "/nowhere"), ("DELETE", "/api/tasks"), ("GET", "/api/tasks/a/b/c")):
        status, _, body = server.handle(method, path, {"Authorization": f"Bearer {token}"}, b"", "127.0.0.1")
        assert (status, json.loads(body)) == (403, {"message": "Missing Authentication Token"})
    assert invoke.events == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[]", "body"),
        (b'{"groups": []}', "sub"),
        (b'{"sub": ""}', "sub"),
        (b'{"sub": "a", "groups": "admins"}', "groups"),
        (b'{"sub": "a", "role": "admin"}', "role"),
    ],
)
def test_token_requests_name_the_bad_field(gateway: Any, body: bytes, field: str) -> None:
    server, _ = gateway
    status, _, reply = server.handle("POST", "/local/token", {}, body, "127.0.0.1")
    assert status == 400
    assert json.loads(reply)["details"][0]["field"] == field


def test_proxy_responses_become_http_responses() -> None:
    template = load_template()
    binary = RecordingInvoke(
        {
            "statusCode": 201,
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
            "body": base64.b64encode(b"\x00\x01").decode(),
            "isBase64Encoded": True,
        }
    )
    status, headers, body = LocalApiGateway(template, binary, port=0).handle("GET", "/swagger", {}, b"", "127.0.0.1")
    assert (status, headers["Set-Cookie"], body) == (201, ["a=1", "b=2"], b"\x00\x01")

    broken = RecordingInvoke({"no": "statusCode"})
    status, _, body = LocalApiGateway(template, broken, port=0).handle("GET", "/swagger", {}, b"", "127.0.0.1")
    assert (status, json.loads(body)) == (502, {"message": "Internal server error"})
