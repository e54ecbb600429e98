"""The local API Gateway: routes and authorisation from template.yaml, proxy events in, proxy
responses out, and Cognito's part (bearer tokens) played by POST /local/token."""

from __future__ import annotations

import base64
import json
import socket
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


def _handle_with(reply: Any) -> tuple[int, dict[str, list[str]], bytes]:
    server = LocalApiGateway(load_template(), reply if callable(reply) else RecordingInvoke(reply), port=0)
    try:
        return server.handle("GET", "/swagger", {}, b"", "127.0.0.1")
    finally:
        server.stop()


def test_proxy_responses_become_http_responses() -> None:
    status, headers, body = _handle_with(
        {
            "statusCode": 201,
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
            "body": base64.b64encode(b"\x00\x01").decode(),
            "isBase64Encoded": True,
        }
    )
    assert (status, headers["Set-Cookie"], body) == (201, ["a=1", "b=2"], b"\x00\x01")


def _raises(function: str, event: dict[str, Any]) -> Any:
    raise RuntimeError("handler crashed")


@pytest.mark.parametrize(
    "reply",
    [{"no": "statusCode"}, "not a dict", {"statusCode": 200, "body": "not base64!", "isBase64Encoded": True}, _raises],
    ids=["no status", "not a dict", "bad base64", "handler raised"],
)
def test_a_failed_integration_is_api_gateways_502(reply: Any) -> None:
    status, _, body = _handle_with(reply)
    assert (status, json.loads(body)) == (502, {"message": "Internal server error"})


def test_a_token_with_non_ascii_characters_is_401_not_a_crash(gateway: Any) -> None:
    server, _ = gateway
    token = _token(server, "alice", []) + "é"
    status, _, _ = server.handle("GET", "/api/tasks", {"Authorization": f"Bearer {token}"}, b"", "127.0.0.1")
    assert status == 401


# ------------------------------------------------------------------ over a socket


@pytest.fixture
def served() -> Any:
    invoke = RecordingInvoke(
        {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": '{"ok": true}'}
    )
    server = LocalApiGateway(load_template(), invoke, port=0)
    server.start()
    yield server, invoke
    server.stop()


def _exchange(server: LocalApiGateway, raw: bytes) -> bytes:
    """Sends raw bytes, returns everything the server answers until it closes or goes quiet."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(raw)
        chunks = []
        connection.settimeout(1.0)
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_http_requests_reach_the_function_and_replies_come_back(served: Any) -> None:
    server, invoke = served
    body = b'{"a": 1}'
    request = (
        b"POST /unsubscribe?token=t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    answer = _exchange(server, request)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"ok": true}')
    [(_, event)] = invoke.events
    assert event["body"] == '{"a": 1}' and event["headers"]["Content-Type"] == "text/plain"
    assert event["queryStringParameters"] == {"token": "t"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Content-Length: abc\r\n", b"400"),
        (b"Content-Length: -1\r\n", b"400"),
        (b"Transfer-Encoding: chunked\r\n", b"411"),
        (b"Content-Length: 99999999999\r\n", b"413"),
    ],
)
def test_unreadable_requests_are_refused_and_the_connection_closed(served: Any, headers: bytes, status: bytes) -> None:
    server, invoke = served
    # What follows the refused request must not run as a request of its own.
    smuggled = b"POST /unsubscribe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    answer = _exchange(server, b"POST /unsubscribe HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + smuggled)
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    assert answer.count(b"HTTP/1.1 ") == 1
    assert invoke.events == []


def test_head_gets_headers_without_a_body(served: Any) -> None:
    server, _ = served
    # No route declares HEAD, so this is API Gateway's 403, with its Content-Length but no body.
    answer = _exchange(server, b"HEAD /swagger HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403") and b"Content-Length: 43" in answer
    assert answer.endswith(b"\r\n\r\n")
