"""A populated system for the reliability suite: an administrator, an enabled email service and
tenants, each with quota, the service assigned, a sender, tagged contacts, a template and a task,
all created through the API as clients would."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from core.mail.unsubscribe import sign_unsubscribe
from tests.reliability.gateway import InProcessGateway

ADMIN = "admin"


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any


@dataclass(frozen=True)
class Tenant:
    user_id: str
    sender_id: str
    contact_ids: list[str]
    template_id: str
    task_id: str  # created with the explicit contacts
    contact_emails: list[str]
    unsubscribe_token: str  # the signed link of the first contact, as the task's emails carry it
    import_id: str  # a bulk import waiting for its upload


@dataclass
class World:
    gateway: InProcessGateway
    service_id: str = ""
    tenants: dict[str, Tenant] = field(default_factory=dict)

    def token(self, user: str) -> str:
        return self.gateway.token(user, ["admins"] if user == ADMIN else [])

    def call(self, method: str, target: str, body: Any = None, *, user: str) -> Reply:
        """`target`: path and query, percent-encoded as sent."""
        raw = b"" if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        reply = self.gateway.request(method, target, headers, raw)
        try:
            parsed = json.loads(reply.body) if reply.body else None
        except ValueError:
            parsed = reply.body.decode()
        return Reply(reply.status, parsed)

    def created(self, method: str, path: str, body: Any, *, user: str, status: int = 201) -> Any:
        reply = self.call(method, path, body, user=user)
        assert reply.status == status, (method, path, reply)
        return reply.body


def populate(gateway: InProcessGateway, signing_key: str, tenants: tuple[str, ...]) -> World:
    world = World(gateway)
    service = {"name": "ses-main", "region": "us-east-1", "sending_rate": 0.05, "daily_quota": 10_000}
    world.service_id = world.created("POST", "/api/services", service, user=ADMIN)["service_id"]
    for user in tenants:
        world.created(
            "POST", "/api/users", {"user_id": user, "email": f"{user}@example.com", "quota": 1000}, user=ADMIN
        )
        world.created("PUT", f"/api/users/{user}/services", {"service_ids": [world.service_id]}, user=ADMIN, status=200)
        sender = world.created("POST", "/api/senders", {"email": f"news@{user}.example", "name": user}, user=user)
        emails = [f"reader{n}@{user}-readers.example" for n in range(3)]
        contacts = [
            {"email": email, "name": f"Reader {n}", "tags": ["vip"] if n else ["news"], "attributes": {"n": n}}
            for n, email in enumerate(emails)
        ]
        contact_ids = world.created("POST", "/api/contacts", {"contacts": contacts}, user=user, status=200)
        template = {"name": "welcome", "subject": "Hello {{ name }}", "html": "<p>Hi {{ name }}</p>", "text": "Hi"}
        template_id = world.created("POST", "/api/templates", template, user=user)["template_id"]
        task = {
            "name": "spring campaign",
            "sender_id": sender["sender_id"],
            "templates": [template_id],
            "contacts": contact_ids["contact_ids"],
        }
        task_id = world.created("POST", "/api/tasks", task, user=user)["task_id"]
        import_id = world.created("POST", "/api/imports", {"filename": "readers.csv"}, user=user)["import_id"]
        world.tenants[user] = Tenant(
            user_id=user,
            sender_id=sender["sender_id"],
            contact_ids=contact_ids["contact_ids"],
            template_id=template_id,
            task_id=task_id,
            contact_emails=emails,
            unsubscribe_token=sign_unsubscribe(signing_key, user, contact_ids["contact_ids"][0], task_id),
            import_id=import_id,
        )
    return world
