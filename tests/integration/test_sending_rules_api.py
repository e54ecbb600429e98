"""Domain limits (services) and send windows and priorities (tasks) through the API: stored as
given, shown back, refused with a 4xx naming the field when a later stage could not use them."""

from __future__ import annotations

from typing import Any

import pytest

from core.storage.models import EmailServiceModel, TaskModel
from tests.conftest import ApiClient
from tests.integration.given import given_contacts, given_service, given_template, given_user

SERVICE = {"name": "ses-main", "region": "us-east-1", "sending_rate": 0.1, "daily_quota": 1000}


def rejected_field(reply: Any) -> str:
    assert 400 <= reply.status < 500, reply.body
    fields = [detail["field"] for detail in reply.body["details"]]
    assert fields and fields[0], reply.body
    return str(fields[0])


def test_domain_limits_are_stored_by_provider_and_shown(api: ApiClient) -> None:
    body = {
        **SERVICE,
        "domain_limits": {
            "gmail.com": {"per_minute": 60},
            "Yahoo": {"per_hour": 2000},
            "corp.example": {"per_minute": 5},
        },
    }
    reply = api.post("/api/services", body)
    assert reply.status == 201, reply.body
    # gmail.com limits the whole gmail group (googlemail.com too); names are case-insensitive.
    assert reply.body["domain_limits"] == {
        "gmail": {"per_minute": 60},
        "yahoo": {"per_hour": 2000},
        "corp.example": {"per_minute": 5},
    }
    assert reply.body["interleave_domains"] is True
    service_id = reply.body["service_id"]

    reply = api.patch(f"/api/services/{service_id}", {"domain_limits": None, "interleave_domains": False})
    assert reply.status == 200, reply.body
    assert reply.body["domain_limits"] == {} and reply.body["interleave_domains"] is False
    stored = EmailServiceModel.get(service_id)
    assert stored.domain_limits is None and stored.interleave_domains is False


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"gmail": {}}, "domain_limits"),  # neither limit
        ({"gmail": {"per_minute": 0}}, "domain_limits"),
        ({"gmail": {"per_minute": 1.5}}, "domain_limits"),
        ({"gmail": {"per_day": 10}}, "domain_limits"),
        ({"not a domain": {"per_minute": 1}}, "domain_limits"),
        ({"x" * 300 + ".com": {"per_minute": 1}}, "domain_limits"),
        ({f"d{n}.example": {"per_minute": 1} for n in range(101)}, "domain_limits"),
        ([], "domain_limits"),
    ],
)
def test_bad_domain_limits_are_refused(api: ApiClient, limits: Any, field: str) -> None:
    reply = api.post("/api/services", {**SERVICE, "domain_limits": limits})
    assert rejected_field(reply).startswith(field)
    assert list(EmailServiceModel.scan()) == []


def test_interleaving_cannot_be_set_to_null(api: ApiClient) -> None:
    service_id = given_service(api)
    reply = api.patch(f"/api/services/{service_id}", {"interleave_domains": None})
    assert rejected_field(reply) == "interleave_domains"


@pytest.fixture
def alice(api: ApiClient) -> dict[str, Any]:
    service = given_service(api)
    given_user(api, "alice", quota=100, service_ids=[service])
    reply = api.post("/api/senders", {"email": "news@alice.example.com", "name": "News"}, user="alice")
    assert reply.status == 201, reply.body
    contacts = given_contacts(api, "alice", {"email": "a@example.org", "timezone": "Asia/Tokyo"})
    return {"sender": reply.body["sender_id"], "template": given_template(api, "alice"), "contacts": contacts}


def task_body(alice: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "name": "launch",
        "sender_id": alice["sender"],
        "templates": [alice["template"]],
        "contacts": alice["contacts"],
        **fields,
    }


def test_a_send_window_and_priority_are_stored_and_shown(api: ApiClient, alice: dict[str, Any]) -> None:
    window = {"start": "09:00", "end": "17:30", "timezone": "Europe/Paris", "quiet_days": ["sat", "sun"]}
    reply = api.post("/api/tasks", task_body(alice, send_window=window, priority="urgent"), user="alice")
    assert reply.status == 201, reply.body
    task_id = reply.body["task_id"]
    shown = api.get(f"/api/tasks/{task_id}", user="alice").body
    assert shown["send_window"] == window and shown["priority"] == "urgent"
    stored = TaskModel.get(task_id)
    assert stored.window_planned is not None and stored.window_done is not None

    reply = api.post("/api/tasks", task_body(alice), user="alice")
    shown = api.get(f"/api/tasks/{reply.body['task_id']}", user="alice").body
    assert shown["send_window"] is None and shown["priority"] == "normal"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"send_window": {"start": "9:00", "end": "17:00"}}, "send_window.start"),
        ({"send_window": {"start": "09:00", "end": "24:00"}}, "send_window.end"),
        ({"send_window": {"start": "09:00", "end": "09:00"}}, "send_window"),
        ({"send_window": {"start": "09:00", "end": "17:00", "timezone": "Mars/Olympus"}}, "send_window.timezone"),
        ({"send_window": {"start": "09:00", "end": "17:00", "quiet_days": ["sun", "sun"]}}, "send_window.quiet_days"),
        ({"send_window": {"start": "09:00", "end": "17:00", "quiet_days": ["funday"]}}, "send_window.quiet_days"),
        (
            {
                "send_window": {
                    "start": "09:00",
                    "end": "17:00",
                    "quiet_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                }
            },
            "send_window.quiet_days",
        ),
        ({"send_window": {"start": "09:00", "end": "17:00", "hours": 8}}, "send_window.hours"),
        ({"priority": "asap"}, "priority"),
        ({"priority": None}, "priority"),
    ],
)
def test_bad_windows_and_priorities_are_refused(
    api: ApiClient, alice: dict[str, Any], fields: dict[str, Any], field: str
) -> None:
    reply = api.post("/api/tasks", task_body(alice, **fields), user="alice")
    assert rejected_field(reply).startswith(field), reply.body
    assert list(TaskModel.scan()) == []
