"""Idempotency-Key on creating POSTs: a retried request answers the first reply and creates
nothing; another body with the same key is 409; keys are per caller; errors are not remembered."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from core.settings import Settings
from core.storage.models import SenderModel, TaskModel, TemplateModel, UserModel
from tests.conftest import ApiClient
from tests.integration.given import assert_rejected, given_contacts, given_service, given_template, given_user


@pytest.fixture
def alice(api: ApiClient) -> dict[str, Any]:
    service = given_service(api)
    given_user(api, "alice", quota=50, service_ids=[service])
    given_user(api, "bob", quota=50, service_ids=[service])
    contacts = given_contacts(api, "alice", *({"email": f"r{n}@example.org"} for n in range(5)))
    sender = api.post("/api/senders", {"email": "news@alice.example.com", "name": "News"}, user="alice")
    assert sender.status == 201, sender.body
    return {"contacts": contacts, "sender": sender.body["sender_id"], "template": given_template(api, "alice")}


def _task(alice: dict[str, Any], name: str = "Launch") -> dict[str, Any]:
    return {"name": name, "sender_id": alice["sender"], "templates": [alice["template"]], "contacts": alice["contacts"]}


def _key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def test_a_retried_task_creation_returns_the_first_reply_and_charges_nothing_more(
    api: ApiClient, alice: dict[str, Any], aws: Settings
) -> None:
    # Given a task created with a key
    first = api.post("/api/tasks", _task(alice), user="alice", headers=_key("retry-1"))
    assert first.status == 201, first.body
    # When the client retries the same request (e.g. after a timeout), body keys reordered
    retried = api.post("/api/tasks", dict(reversed(list(_task(alice).items()))), user="alice", headers=_key("retry-1"))
    # Then it gets the same answer, marked as a replay, and there is still one task and one plan
    assert (retried.status, retried.body) == (201, first.body)
    assert retried.headers.get("Idempotent-Replayed") == "true"
    assert [task.task_id for task in TaskModel.scan()] == [first.body["task_id"]]
    messages = boto3.client("sqs").receive_message(QueueUrl=aws.planner_queue_url, MaxNumberOfMessages=10)
    assert len(messages.get("Messages", [])) == 1


def test_the_same_key_with_another_body_is_409_and_creates_nothing(api: ApiClient, alice: dict[str, Any]) -> None:
    first = api.post("/api/tasks", _task(alice), user="alice", headers=_key("k-2"))
    assert first.status == 201, first.body
    # When
    reply = api.post("/api/tasks", _task(alice, name="Another"), user="alice", headers=_key("k-2"))
    # Then
    assert_rejected(reply, "Idempotency-Key", status=409)
    assert reply.body["error"] == "idempotency_key_reused"
    assert len(list(TaskModel.scan())) == 1


def test_keys_are_per_caller(api: ApiClient, alice: dict[str, Any]) -> None:
    # Given alice used a key for a template
    body = {"name": "n", "subject": "s", "html": "<p>x</p>"}
    mine = api.post("/api/templates", body, user="alice", headers=_key("shared"))
    # When bob sends the same key and body
    his = api.post("/api/templates", body, user="bob", headers=_key("shared"))
    # Then bob gets his own template, never alice's reply
    assert mine.status == his.status == 201
    assert his.body["template_id"] != mine.body["template_id"]
    assert len(list(TemplateModel.query("bob"))) == 1


def test_without_a_key_each_post_creates(api: ApiClient, alice: dict[str, Any]) -> None:
    body = {"email": "ops@alice.example.com", "name": "Ops"}
    assert api.post("/api/senders", body, user="alice").status == 201
    assert api.post("/api/senders", body, user="alice").status == 201
    assert len(list(SenderModel.query("alice"))) == 3


def test_an_error_is_not_remembered_so_the_fixed_retry_runs(api: ApiClient) -> None:
    # Given a create that failed (user already exists would be 409; here: invalid quota)
    bad = api.post("/api/users", {"user_id": "carol", "email": "c@example.com", "quota": -1}, headers=_key("u-1"))
    assert bad.status == 422
    # When the same key is retried with a fixed body
    fixed = api.post("/api/users", {"user_id": "carol", "email": "c@example.com", "quota": 5}, headers=_key("u-1"))
    # Then it runs
    assert fixed.status == 201, fixed.body
    assert UserModel.get("carol").quota == 5


@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "caf\u00e9"])
def test_a_malformed_key_is_422_naming_the_header(api: ApiClient, key: str) -> None:
    reply = api.post("/api/users", {"user_id": "dave", "email": "d@example.com", "quota": 5}, headers=_key(key))
    assert_rejected(reply, "Idempotency-Key")
    assert list(UserModel.scan()) == []


def test_a_large_reply_is_replayed_whole(api: ApiClient, alice: dict[str, Any]) -> None:
    body = {"name": "big", "subject": "s", "html": "<p>" + "\u00e9t\u00e9 " * 60_000 + "</p>"}
    first = api.post("/api/templates", body, user="alice", headers=_key("big"))
    assert first.status == 201, first.body
    again = api.post("/api/templates", body, user="alice", headers=_key("big"))
    assert (again.status, again.body) == (201, first.body)
    assert len(list(TemplateModel.query("alice"))) == 2  # alice's given template and this one
