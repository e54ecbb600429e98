"""Given-steps shared by the API tests: resources created through the API as an admin or user."""

from __future__ import annotations

from typing import Any

from tests.conftest import ApiClient


def given_service(api: ApiClient, name: str = "ses-main", **fields: Any) -> str:
    body = {"name": name, "region": "us-east-1", "sending_rate": 0.05, "daily_quota": 1000, **fields}
    reply = api.post("/api/services", body)
    assert reply.status == 201, reply.body
    return str(reply.body["service_id"])


def given_user(api: ApiClient, user_id: str, quota: int = 100, service_ids: list[str] | None = None) -> None:
    reply = api.post("/api/users", {"user_id": user_id, "email": f"{user_id}@example.com", "quota": quota})
    assert reply.status == 201, reply.body
    if service_ids is not None:
        reply = api.put(f"/api/users/{user_id}/services", {"service_ids": service_ids})
        assert reply.status == 200, reply.body


def given_contacts(api: ApiClient, user: str, *contacts: dict[str, Any]) -> list[str]:
    reply = api.post("/api/contacts", {"contacts": list(contacts)}, user=user)
    assert reply.status == 200, reply.body
    return list(reply.body["contact_ids"])


def given_template(api: ApiClient, user: str, **fields: Any) -> str:
    body = {"name": "welcome", "subject": "Hello {{ name }}", "html": "<p>Hi {{ name }}</p>", **fields}
    reply = api.post("/api/templates", body, user=user)
    assert reply.status == 201, reply.body
    return str(reply.body["template_id"])


def assert_rejected(reply: Any, field: str, status: int = 422) -> None:
    """A 4xx in the error shape whose details name `field`."""
    assert reply.status == status, reply.body
    assert set(reply.body) == {"error", "message", "details"}, reply.body
    fields = [detail["field"] for detail in reply.body["details"]]
    assert field in fields, reply.body
