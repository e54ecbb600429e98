"""Deliverability end to end on the local runner: a campaign to SES's mailbox simulator addresses is
sent, the runner's SES simulator publishes what real SES would (Send, Delivery, Bounce, Complaint) on
the SES events topic, SNS delivers it to the events queue, EventsFunction applies it: the task ends
with the right delivered / bounced / complained counters, each email's subtask says what happened,
and the bounced and complained contacts are suppressed. A replayed notification changes nothing; a
replayed throttling delay tightens its recipient's group on the service."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import boto3

from local_runner.moto_server import aws_environment
from tests.e2e.test_local_runner import Runner
from tests.e2e.test_local_runner import runner as runner  # the fixture
from tests.support.serving import REPO_ROOT, until

SIM = "simulator.amazonses.com"
# address -> what SES reports for it
RECIPIENTS = {
    f"success@{SIM}": {"send", "delivery"},
    f"ooto@{SIM}": {"send", "delivery"},
    f"bounce@{SIM}": {"send", "bounce"},
    f"suppressionlist@{SIM}": {"send", "bounce"},
    f"complaint@{SIM}": {"send", "delivery", "complaint"},
}


def _dynamodb(runner: Runner) -> Any:
    environment = aws_environment(runner.aws_endpoint)
    return boto3.client(
        "dynamodb",
        endpoint_url=runner.aws_endpoint,
        region_name=environment["AWS_REGION"],
        aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
    )


def _counts(dynamodb: Any, task_id: str) -> dict[str, int]:
    item = dynamodb.get_item(TableName="TasksTable", Key={"task_id": {"S": task_id}}, ConsistentRead=True)["Item"]
    return {name: int(value["N"]) for name, value in item["counts"]["M"].items()}


def _events_by_address(dynamodb: Any, task_id: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for page in dynamodb.get_paginator("scan").paginate(TableName="SubtasksTable"):
        for item in page["Items"]:
            if item["task_id"]["S"] == task_id:
                found[item["email"]["S"]] = set(item.get("ses_events", {}).get("SS", []))
    return found


def _campaign(runner: Runner) -> tuple[str, str, str]:
    admin, alice = runner.token("admin", ["admins"]), runner.token("alice")
    runner.ok("POST", "/api/users", {"user_id": "alice", "email": "alice@example.com", "quota": 100}, admin)
    service = runner.ok(
        "POST",
        "/api/services",
        {"name": "Local SES", "region": "us-east-1", "sending_rate": 0.05, "daily_quota": 1000},
        admin,
    )
    runner.ok("PUT", "/api/users/alice/services", {"service_ids": [service["service_id"]]}, admin)
    sender = runner.ok("POST", "/api/senders", {"email": "news@shop.example", "name": "Shop News"}, alice)
    contacts = [{"email": address, "tags": ["list"]} for address in RECIPIENTS]
    runner.ok("POST", "/api/contacts", {"contacts": contacts}, alice)
    template = runner.ok(
        "POST", "/api/templates", {"name": "t", "subject": "Hello", "html": "<p>Hi</p>", "text": "Hi"}, alice
    )
    task = runner.ok(
        "POST",
        "/api/tasks",
        {
            "name": "Simulator wave",
            "sender_id": sender["sender_id"],
            "templates": [template["template_id"]],
            "recipient_rule": {"type": "tag_based", "include_tags": ["list"]},
        },
        alice,
    )
    runner.ok("POST", "/api/scheduler/start", token=admin)
    return task["task_id"], admin, alice


def test_a_campaign_to_the_mailbox_simulator_ends_with_the_right_counters(runner: Runner) -> None:
    # Given a campaign to SES's simulator addresses, sent by the runner
    task_id, admin, alice = _campaign(runner)
    until(
        lambda: runner.ok("GET", f"/api/tasks/{task_id}", token=alice)["status"] == "completed",
        120,
        "the campaign to complete",
    )
    dynamodb = _dynamodb(runner)

    # When SES's events come back through the topic, the queue and EventsFunction
    expected = {"delivered": 3, "bounced": 2, "complained": 1}
    until(
        lambda: {name: _counts(dynamodb, task_id).get(name, 0) for name in expected} == expected,
        90,
        f"the counters {expected}",
    )

    # Then every email's subtask holds what SES reported about it, and the API shows the counters
    until(lambda: _events_by_address(dynamodb, task_id) == RECIPIENTS, 30, "every event on its subtask")
    counts = runner.ok("GET", f"/api/tasks/{task_id}", token=alice)["counts"]
    assert (counts["bounced"], counts["complained"], counts["sent"]) == (2, 1, 5)

    # And a notification replayed by hand about one of them (SNS envelope, its message id) changes nothing
    message_id = next(
        item["message_id"]["S"]
        for item in dynamodb.scan(TableName="SubtasksTable")["Items"]
        if item["email"]["S"] == f"bounce@{SIM}"
    )
    replayed = subprocess.run(  # noqa: S603 - our own module
        [
            sys.executable,
            "-m",
            "local_runner",
            "replay-events",
            "events/ses/bounce_permanent_sns.json",
            "events/ses/delivery_eventbridge.json",
            "--endpoint",
            runner.aws_endpoint,
            "--message-id",
            message_id,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replayed.returncode == 0, replayed.stderr
    # the delivery is new for that email (counted once), the bounce a repeat (not counted again)
    until(lambda: _counts(dynamodb, task_id)["delivered"] == 4, 30, "the replayed delivery")
    assert _counts(dynamodb, task_id)["bounced"] == 2

    # And a provider's throttling delay replayed now about one of them tightens its group on the service
    replayed = subprocess.run(  # noqa: S603 - our own module
        [
            sys.executable,
            "-m",
            "local_runner",
            "replay-events",
            "events/ses/delivery_delay_throttled_sns.json",
            "--endpoint",
            runner.aws_endpoint,
            "--message-id",
            message_id,
            "--now",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replayed.returncode == 0, replayed.stderr
    until(
        lambda: (
            runner.ok("GET", "/api/services", token=admin)["services"][0]["domain_deferrals"].get(SIM, {}).get("level")
            == 1
        ),
        30,
        "the simulator's group tightened",
    )

    # And the bounced and complained contacts are suppressed, on the tenant's list too
    statuses = {c["email"]: c["status"] for c in runner.ok("GET", "/api/contacts", token=alice)["contacts"]}
    assert statuses[f"bounce@{SIM}"] == "bounced" and statuses[f"suppressionlist@{SIM}"] == "bounced"
    assert statuses[f"complaint@{SIM}"] == "complained" and statuses[f"success@{SIM}"] == "subscribed"
    listed = runner.ok("GET", "/api/suppressions", token=alice)["suppressions"]
    assert sorted((entry["email"], entry["reason"]) for entry in listed) == [
        (f"bounce@{SIM}", "bounced"),
        (f"complaint@{SIM}", "complained"),
        (f"suppressionlist@{SIM}", "bounced"),
    ]
