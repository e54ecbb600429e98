"""The holes a careless client and a hostile tenant found (issue 8), replayed: each now gets a clear
4xx naming the field and changes nothing, or reads back without failing."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from core.storage.models import ContactModel, EmailServiceModel, SenderModel, TaskModel, TemplateModel
from tests.conftest import ApiClient
from tests.integration.given import assert_rejected, given_contacts, given_service, given_template, given_user


@pytest.fixture
def alice(api: ApiClient) -> dict[str, Any]:
    service = given_service(api)
    given_user(api, "alice", quota=50, service_ids=[service])
    contacts = given_contacts(api, "alice", {"email": "r1@example.org"}, {"email": "r2@example.org"})
    sender = api.post("/api/senders", {"email": "news@alice.example.com", "name": "News"}, user="alice")
    assert sender.status == 201, sender.body
    return {"contacts": contacts, "sender": sender.body["sender_id"], "template": given_template(api, "alice")}


def _task(alice: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "name": "Launch",
        "sender_id": alice["sender"],
        "templates": [alice["template"]],
        "contacts": alice["contacts"],
        **fields,
    }


# ---------------------------------------------------------------- 1. timestamps


@pytest.mark.parametrize(
    "scheduled_at",
    [
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "1999-12-31T23:59:59Z",
        "2200-12-31T23:30:00-01:00",  # 2201 in UTC
        10**11,  # would be read as milliseconds (1973)
        1_900_000_000,  # a plain epoch number is refused too: ISO 8601 text only
        "2027-01-01T09:00:00",  # no offset
        "next tuesday",
        True,
    ],
)
def test_an_out_of_range_or_ambiguous_scheduled_at_is_422_and_no_task_is_created(
    api: ApiClient, alice: dict[str, Any], scheduled_at: Any
) -> None:
    reply = api.post("/api/tasks", _task(alice, scheduled_at=scheduled_at), user="alice")
    assert_rejected(reply, "scheduled_at")
    assert list(TaskModel.scan()) == []


def test_scheduled_at_is_kept_to_the_second_in_utc(api: ApiClient, alice: dict[str, Any]) -> None:
    reply = api.post("/api/tasks", _task(alice, scheduled_at="2200-12-31T23:59:59.999+00:00"), user="alice")
    assert reply.status == 201, reply.body
    task = api.get(f"/api/tasks/{reply.body['task_id']}", user="alice")
    assert task.body["scheduled_at"] == "2200-12-31T23:59:59Z"


@pytest.mark.parametrize("stored", [-62_135_596_800.0 - 50_400, 253_402_300_799.0 + 86_400, -1e30, 1e30])
def test_a_stored_timestamp_out_of_range_never_breaks_a_read_or_control_route(
    api: ApiClient, alice: dict[str, Any], stored: float
) -> None:
    # Given a task item holding a timestamp no datetime can show (written before the API bounded them)
    reply = api.post("/api/tasks", _task(alice), user="alice")
    task_id = reply.body["task_id"]
    TaskModel(task_id).update(actions=[TaskModel.scheduled_at.set(stored)])
    # Then every route that shows the task answers without a 5xx
    for method, path, user in [
        ("GET", "/api/tasks", "alice"),
        ("GET", "/api/tasks", "admin"),
        ("GET", f"/api/tasks/{task_id}", "alice"),
        ("POST", f"/api/scheduler/tasks/{task_id}/pause", "alice"),
        ("POST", f"/api/scheduler/tasks/{task_id}/resume", "alice"),
        ("POST", f"/api/tasks/{task_id}/cancel", "alice"),
    ]:
        answer = api.call(method, path, user=user)
        assert answer.status < 500, (method, path, answer.body)


# ---------------------------------------------------------------- 5. what ends up in a header

BAD_HEADER_TEXT = ["a\rb", "a\nb", "a\x00b", "a\u2028b", "a\u2029b", "a\x85b", "a\x0bb", "a\x0cb", "a\x7fb", "a\x1bb"]


@pytest.mark.parametrize("bad", BAD_HEADER_TEXT)
def test_control_characters_in_a_service_name_are_422(api: ApiClient, bad: str) -> None:
    body = {"name": bad, "region": "us-east-1", "sending_rate": 1.0, "daily_quota": 10}
    assert_rejected(api.post("/api/services", body), "name")
    assert list(EmailServiceModel.scan()) == []


@pytest.mark.parametrize("bad", BAD_HEADER_TEXT)
def test_control_characters_in_sender_contact_and_subject_are_422_naming_the_field(
    api: ApiClient, alice: dict[str, Any], bad: str
) -> None:
    senders_before = len(list(SenderModel.query("alice")))
    assert_rejected(api.post("/api/senders", {"email": "x@alice.example.com", "name": bad}, user="alice"), "name")
    reply = api.post("/api/contacts", {"contacts": [{"email": "new@example.org", "name": bad}]}, user="alice")
    assert_rejected(reply, "contacts[0].name")
    reply = api.post("/api/templates", {"name": "t", "subject": f"Hi {bad}", "html": "<p>x</p>"}, user="alice")
    assert_rejected(reply, "subject")
    reply = api.post("/api/templates", {"name": bad, "subject": "s", "html": "<p>x</p>"}, user="alice")
    assert_rejected(reply, "name")
    assert_rejected(api.post("/api/tasks", _task(alice, name=bad), user="alice"), "name")
    assert len(list(SenderModel.query("alice"))) == senders_before
    assert len(list(ContactModel.query("alice"))) == 2
    assert len(list(TemplateModel.query("alice"))) == 1
    assert list(TaskModel.scan()) == []


@pytest.mark.parametrize("address", ["j\u00f6rg@example.org", "\u7528\u6237@example.org"])
def test_a_non_ascii_local_part_is_422_where_it_would_be_sent(
    api: ApiClient, alice: dict[str, Any], address: str
) -> None:
    assert_rejected(api.post("/api/senders", {"email": address, "name": "J"}, user="alice"), "email")
    assert_rejected(api.post("/api/contacts", {"contacts": [{"email": address}]}, user="alice"), "contacts[0].email")
    preview = api.post(f"/api/templates/{alice['template']}/preview", {"sample": {"email": address}}, user="alice")
    assert_rejected(preview, "sample.email")
    assert len(list(ContactModel.query("alice"))) == 2


def test_an_internationalised_domain_is_accepted(api: ApiClient, alice: dict[str, Any]) -> None:
    reply = api.post("/api/contacts", {"contacts": [{"email": "anna@b\u00fccher.example"}]}, user="alice")
    assert reply.status == 200, reply.body


# ---------------------------------------------------------------- admin: the exact group name


@pytest.mark.parametrize("groups", ["x,admins", "admins,", "[x,admins ops]", "Admins", "admins-team", "[notadmins]"])
def test_a_group_whose_name_only_contains_admins_is_not_admin(api: ApiClient, groups: str) -> None:
    claims = {"sub": "mallory", "token_use": "id", "cognito:groups": groups}
    reply = api.post("/api/users", {"user_id": "mallory", "email": "m@example.com", "quota": 10**9}, claims=claims)
    assert reply.status == 403, reply.body
    assert api.get("/api/users/alice", claims=claims).status == 404


def _jwt(payload: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(payload)}.signature-checked-by-api-gateway"


def test_groups_are_read_from_the_id_token_list_when_the_authorizer_flattened_them(api: ApiClient) -> None:
    # API Gateway hands claims over as strings; the ID token it verified still has the real list.
    flattened = {"sub": "mallory", "cognito:groups": "x,admins"}
    token = _jwt({"sub": "mallory", "cognito:groups": ["x,admins"]})
    reply = api.post(
        "/api/users",
        {"user_id": "m2", "email": "m@example.com", "quota": 1},
        claims=flattened,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status == 403
    # And a real admin with several groups is one
    admin_token = _jwt({"sub": "root", "cognito:groups": ["ops", "admins"]})
    reply = api.post(
        "/api/users",
        {"user_id": "m3", "email": "m@example.com", "quota": 1},
        claims={"sub": "root", "cognito:groups": "ops,admins"},
        headers={"Authorization": admin_token},
    )
    assert reply.status == 201, reply.body
