"""The local runner end to end: `python -m local_runner serve` on a free port, driven by a real HTTP
client, plans a campaign from its queue, dispatches it from a fired schedule and leaves the mail in
outbox/ as .eml files; the one-click unsubscribe link in that mail works against the same runner;
Ctrl-C stops everything."""

from __future__ import annotations

import email
import email.policy
import json
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.support.serving import serve, until

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Runner:
    process: subprocess.Popen[str]
    api_url: str
    aws_endpoint: str
    outbox: Path

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.api_url + path, data=data, method=method)  # noqa: S310 - http only
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with _OPENER.open(request, timeout=30) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
        text = raw.decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def ok(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        status, reply = self.call(method, path, body, token)
        assert 200 <= status < 300, f"{method} {path} -> {status} {reply}"
        return reply

    def token(self, sub: str, groups: list[str] | None = None) -> str:
        reply = self.ok("POST", "/local/token", {"sub": sub, "groups": groups or []})
        token: str = reply["token"]
        return token


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    outbox = tmp_path / "outbox"
    with serve(outbox) as served:
        api_url, aws_endpoint = served.banner("API", "AWS")
        yield Runner(served.process, api_url, aws_endpoint, outbox)


def _messages(outbox: Path) -> list[EmailMessage]:
    messages = []
    for path in sorted(outbox.glob("*.eml")):
        with path.open("rb") as handle:
            message = email.message_from_binary_file(handle, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


def _text_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    content: str = part.get_content()
    return content


def test_a_campaign_is_planned_dispatched_by_its_schedule_and_lands_in_the_outbox(runner: Runner) -> None:
    admin = runner.token("admin", ["admins"])
    alice = runner.token("alice")

    # Without a token the API is closed; an unrouted path is API Gateway's 403.
    assert runner.call("GET", "/api/tasks")[0] == 401
    assert runner.call("GET", "/api/tasks", token="local.forged.token")[0] == 401  # noqa: S106
    assert runner.call("GET", "/nowhere", token=admin) == (403, {"message": "Missing Authentication Token"})
    status, reply = runner.call("POST", "/local/token", {"groups": ["admins"]})
    assert status == 400 and reply["details"][0]["field"] == "sub"

    runner.ok("POST", "/api/users", {"user_id": "alice", "email": "alice@example.com", "quota": 100}, admin)
    service = runner.ok(
        "POST",
        "/api/services",
        {"name": "Local SES", "region": "us-east-1", "sending_rate": 0.05, "daily_quota": 1000},
        admin,
    )
    runner.ok("PUT", "/api/users/alice/services", {"service_ids": [service["service_id"]]}, admin)
    sender = runner.ok("POST", "/api/senders", {"email": "news@shop.example", "name": "Shop News"}, alice)
    people = [("Ana", "newsletter"), ("Bruno", "newsletter"), ("Chen", "newsletter"), ("Dana", "churned")]
    runner.ok(
        "POST",
        "/api/contacts",
        {
            "contacts": [
                {"email": f"{name.lower()}@example.org", "name": name, "tags": ["newsletter", tag]}
                for name, tag in people
            ]
        },
        alice,
    )
    template = runner.ok(
        "POST",
        "/api/templates",
        {
            "name": "Welcome",
            "subject": "Hello {{ name }}",
            "html": "<p>Dear {{ name }}, welcome.</p>",
            "text": "Dear {{ name }}, welcome.",
        },
        alice,
    )
    task = runner.ok(
        "POST",
        "/api/tasks",
        {
            "name": "Welcome wave",
            "sender_id": sender["sender_id"],
            "templates": [template["template_id"]],
            "recipient_rule": {"type": "tag_based", "include_tags": ["newsletter"], "exclude_tags": ["churned"]},
        },
        alice,
    )
    task_path = f"/api/tasks/{task['task_id']}"

    # The planner runs from its queue: the task leaves `planning` with three recipients (Dana excluded).
    planned = until(
        lambda: (reply := runner.ok("GET", task_path, token=alice))["status"] != "planning" and reply,
        60,
        "the planner",
    )
    assert planned["status"] == "queued" and planned["counts"]["total"] == 3
    assert list(runner.outbox.glob("*.eml")) == []  # nothing is sent while the scheduler is stopped

    # Starting the scheduler enables the service's schedule; the runner fires it; the dispatcher sends.
    runner.ok("POST", "/api/scheduler/start", token=admin)
    done = until(
        lambda: (reply := runner.ok("GET", task_path, token=alice))["status"] == "completed" and reply,
        90,
        "the campaign to complete",
    )
    assert done["counts"]["sent"] == 3 and done["counts"]["failed"] == 0, done["counts"]
    messages = until(lambda: len(found := _messages(runner.outbox)) == 3 and found, 10, "three .eml files")

    by_recipient = {str(message["To"]): message for message in messages}
    assert set(by_recipient) == {"Ana <ana@example.org>", "Bruno <bruno@example.org>", "Chen <chen@example.org>"}
    for name in ("Ana", "Bruno", "Chen"):
        message = by_recipient[f"{name} <{name.lower()}@example.org>"]
        assert str(message["From"]) == "Shop News <news@shop.example>"
        assert str(message["Subject"]) == f"Hello {name}"
        assert f"Dear {name}, welcome." in _text_body(message)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["Message-ID"]
        assert str(message["List-Unsubscribe"]).startswith(f"<{runner.api_url}/unsubscribe?token=")

    # The one-click link works against this runner (no bearer token: the signed link is the credential).
    link = str(by_recipient["Ana <ana@example.org>"]["List-Unsubscribe"]).strip("<>")
    status, _ = runner.call("POST", link.removeprefix(runner.api_url))
    assert status == 200
    contacts = runner.ok("GET", "/api/contacts", token=alice)
    statuses = {contact["email"]: contact["status"] for contact in contacts["contacts"]}
    assert statuses["ana@example.org"] == "unsubscribed" and statuses["bruno@example.org"] != "unsubscribed"

    # Ctrl-C: the runner stops and takes its embedded AWS with it.
    runner.process.send_signal(signal.SIGINT)
    assert runner.process.wait(timeout=20) == 0
    with pytest.raises(urllib.error.URLError):
        _OPENER.open(runner.aws_endpoint + "/moto-api/config", timeout=2)


def test_a_service_disabled_mid_campaign_hands_its_work_to_the_other_over_http(runner: Runner) -> None:
    """Black-box, as an operator sees it: two services, one campaign spread over both; the admin
    disables one while it sends. Its queued work goes through the other, nobody gets two emails,
    and status and stats tell the story."""
    admin = runner.token("admin", ["admins"])
    bob = runner.token("bob")
    runner.ok("POST", "/api/users", {"user_id": "bob", "email": "bob@example.com", "quota": 500}, admin)
    services = [
        runner.ok(
            "POST",
            "/api/services",
            {"name": name, "region": "us-east-1", "sending_rate": 0.5, "daily_quota": 1000},
            admin,
        )["service_id"]
        for name in ("ses-a", "ses-b")
    ]
    runner.ok("PUT", "/api/users/bob/services", {"service_ids": services}, admin)
    sender = runner.ok("POST", "/api/senders", {"email": "news@bob.example", "name": "Bob"}, bob)
    contacts = [{"email": f"reader{n}@example.org", "tags": ["all"]} for n in range(60)]
    runner.ok("POST", "/api/contacts", {"contacts": contacts}, bob)
    template = runner.ok("POST", "/api/templates", {"name": "t", "subject": "Hi", "html": "<p>Hi</p>"}, bob)
    rule = {"type": "tag_based", "include_tags": ["all"], "exclude_tags": []}
    task = runner.ok(
        "POST",
        "/api/tasks",
        {
            "name": "Split",
            "sender_id": sender["sender_id"],
            "templates": [template["template_id"]],
            "recipient_rule": rule,
        },
        bob,
    )
    task_path = f"/api/tasks/{task['task_id']}"
    until(lambda: runner.ok("GET", task_path, token=bob)["status"] == "queued", 60, "the planner")
    stats = runner.ok("GET", "/api/scheduler/stats", token=bob)
    assert sorted(stats["tasks"][0]["service_ids"]) == sorted(services)  # routed over both

    runner.ok("POST", "/api/scheduler/start", token=admin)
    until(lambda: len(list(runner.outbox.glob("*.eml"))) >= 6, 60, "the first sends")  # counters move later
    runner.ok("PATCH", f"/api/services/{services[0]}", {"enabled": False}, admin)

    done = until(
        lambda: (reply := runner.ok("GET", task_path, token=bob))["status"] == "completed" and reply,
        120,
        "the campaign to complete on the other service",
    )
    assert (done["counts"]["sent"], done["counts"]["failed"], done["counts"]["unknown"]) == (60, 0, 0)
    messages = until(lambda: len(found := _messages(runner.outbox)) == 60 and found, 15, "sixty .eml files")
    assert len({str(message["To"]) for message in messages}) == 60  # nobody got two
    # ses-a stopped early; ses-b sent the rest (more than its planned half)
    usage = {s["service_id"]: s["used_today"] for s in runner.ok("GET", "/api/services", token=admin)["services"]}
    assert usage[services[0]] + usage[services[1]] == 60 and usage[services[1]] > 30
    status = runner.ok("GET", "/api/scheduler/status", token=admin)
    assert (status["active_services"], status["total_queued_subtasks"]) == (1, 0)
    shown = {s["service_id"]: s for s in runner.ok("GET", "/api/scheduler/stats", token=admin)["services"]}
    assert (shown[services[0]]["enabled"], shown[services[0]]["reason"]) == (False, "disabled")
