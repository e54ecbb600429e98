"""Prompt start: the API wakes the dispatchers of services with work through the dispatch wake-up
queue (template.yaml's DispatchWakeQueue), and every control change is announced (control_seq) so a
sending dispatcher sees it at its next one-request look. The dispatcher handler consumes both its
schedule's ticks and the queue's messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import dispatcher_handler
import pytest

from core.dispatch.schedules import SCHEDULER_STATE_KEY
from core.dispatch.wakeups import WakeRequest
from core.settings import Settings
from core.states import TaskStatus
from core.storage.models import SchedulerStateModel, TaskModel
from tests.conftest import ApiClient, FakeClock
from tests.integration.given import given_contacts, given_service, given_template, given_user
from tests.support.dispatching import World, sent_subtasks, start_scheduler
from tests.support.planning import PlannerDriver, seed_task


def wake_ups(settings: Settings, *, paced: bool = False) -> list[dict[str, Any]]:
    """Bodies now visible on the (fast, or paced) wake-up queue (received and deleted)."""
    sqs = boto3.client("sqs")
    url = settings.paced_dispatch_wake_queue_url if paced else settings.dispatch_wake_queue_url
    bodies = []
    while True:
        reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        messages = reply.get("Messages", [])
        if not messages:
            return sorted(bodies, key=lambda body: body["service_id"])
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def control_seq() -> int:
    try:
        return int(SchedulerStateModel.get(SCHEDULER_STATE_KEY, consistent_read=True).control_seq or 0)
    except SchedulerStateModel.DoesNotExist:
        return 0


def routed_task(status: TaskStatus, services: list[str], now: float, scheduled_at: float | None = None) -> str:
    task = seed_task("alice", now, scheduled_at=scheduled_at)
    task.update(
        actions=[
            TaskModel.status.set(status),
            TaskModel.plan.routing.set(services),  # type: ignore[attr-defined]
            TaskModel.active_partition.set("active"),
            TaskModel.active_sort.set(f"alice#{task.task_id}"),
        ]
    )
    return task.task_id


def test_start_wakes_exactly_the_services_with_work_due(api: ApiClient, aws: Settings, clock: FakeClock) -> None:
    busy, idle, later = given_service(api, "busy"), given_service(api, "idle"), given_service(api, "later")
    routed_task(TaskStatus.QUEUED, [busy], clock.now())
    routed_task(TaskStatus.SCHEDULED, [later], clock.now(), scheduled_at=clock.now() + 3600)

    assert api.post("/api/scheduler/start").status == 200

    assert wake_ups(aws) == [{"service_id": busy, "reason": "start"}]
    assert idle  # no work: its schedule is enough


def test_a_wake_up_goes_to_the_queue_of_its_services_pace_tier(api: ApiClient, aws: Settings, clock: FakeClock) -> None:
    fast, slow = given_service(api, "fast", sending_rate=0.01), given_service(api, "slow", sending_rate=1.0)
    routed_task(TaskStatus.QUEUED, [fast, slow], clock.now())

    assert api.post("/api/scheduler/start").status == 200

    assert aws.paced_dispatch_wake_queue_url and aws.paced_dispatch_wake_queue_url != aws.dispatch_wake_queue_url
    assert wake_ups(aws) == [{"service_id": fast, "reason": "start"}]
    assert wake_ups(aws, paced=True) == [{"service_id": slow, "reason": "start"}]


def test_stop_wakes_nobody(api: ApiClient, aws: Settings, clock: FakeClock) -> None:
    service = given_service(api)
    routed_task(TaskStatus.QUEUED, [service], clock.now())
    assert api.post("/api/scheduler/stop").status == 200
    assert wake_ups(aws) == []


def test_pause_and_resume_are_announced_and_resume_wakes_the_task_services(
    api: ApiClient, aws: Settings, clock: FakeClock
) -> None:
    first, second = given_service(api, "a"), given_service(api, "b")
    task_id = routed_task(TaskStatus.SENDING, [first, second], clock.now())
    before = control_seq()

    assert api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice").status == 200
    assert control_seq() == before + 1
    assert api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice").status == 200  # a no-op announces nothing
    assert control_seq() == before + 1
    assert api.post(f"/api/scheduler/tasks/{task_id}/resume", user="alice").status == 200

    assert control_seq() == before + 2
    assert wake_ups(aws) == [{"service_id": first, "reason": "resume"}, {"service_id": second, "reason": "resume"}]


def test_a_task_resumed_before_its_time_is_woken_at_its_time_or_by_its_schedule(
    api: ApiClient, aws: Settings, clock: FakeClock
) -> None:
    service = given_service(api)
    soon = routed_task(TaskStatus.SCHEDULED, [service], clock.now(), scheduled_at=clock.now() + 600)
    far = routed_task(TaskStatus.SCHEDULED, [service], clock.now(), scheduled_at=clock.now() + 7200)
    for task_id in (soon, far):
        assert api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice").status == 200
        assert api.post(f"/api/scheduler/tasks/{task_id}/resume", user="alice").status == 200
    # The near one's wake-up is delayed to its time (SQS DelaySeconds); the far one's schedule ticks
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=aws.dispatch_wake_queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )
    assert attributes["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "1"
    assert wake_ups(aws) == []


def test_cancel_and_a_service_change_are_announced_and_enabling_wakes(
    api: ApiClient, aws: Settings, clock: FakeClock
) -> None:
    service = given_service(api)
    task_id = routed_task(TaskStatus.QUEUED, [service], clock.now())
    assert api.post("/api/scheduler/start").status == 200
    wake_ups(aws)
    before = control_seq()

    assert api.patch(f"/api/services/{service}", {"enabled": False}).status == 200
    # Its schedule stops firing: one last run finds it disabled and fails its queued work over.
    assert wake_ups(aws) == [{"service_id": service, "reason": "disabled"}]
    assert api.patch(f"/api/services/{service}", {"name": "renamed while disabled"}).status == 200
    assert wake_ups(aws) == []
    assert api.patch(f"/api/services/{service}", {"enabled": True}).status == 200
    assert wake_ups(aws) == [{"service_id": service, "reason": "enabled"}]
    assert api.post(f"/api/tasks/{task_id}/cancel", user="alice").status == 200

    assert control_seq() == before + 4


class Context:
    aws_request_id = "req-1"
    function_name = "DispatcherFunction"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:DispatcherFunction"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


def test_the_handler_takes_a_tick_and_a_wake_up_message(aws: Settings, clock: FakeClock) -> None:
    start_scheduler(clock.now())
    world = World(aws, clock)
    world.service("svc", sending_rate=0.01)
    world.campaign("alice", 3, ["svc"])
    dispatcher_handler.runtime.cache_clear()
    dispatcher_handler.runtime().clock = clock
    body = WakeRequest(service_id="svc", reason="queued").model_dump(mode="json", exclude_none=True)
    event = {"Records": [{"messageId": "m1", "body": json.dumps(body), "eventSource": "aws:sqs"}]}

    summary = dispatcher_handler.lambda_handler(event, Context())

    assert summary["trigger"] == "queued" and summary["sent"] == 3 and summary["stop_reason"] == "no_work"
    tick = dispatcher_handler.lambda_handler({"service_id": "svc"}, Context())
    assert tick["trigger"] == "schedule" and tick["sent"] == 0
    assert len(sent_subtasks()) == 3


@pytest.mark.parametrize(("starts_in", "woken", "delayed"), [(None, "queued", 0), (300, None, 1), (7200, None, 0)])
def test_a_planned_task_wakes_its_services_now_or_at_its_time(
    api: ApiClient,
    aws: Settings,
    clock: FakeClock,
    planner: PlannerDriver,
    starts_in: int | None,
    woken: str | None,
    delayed: int,
) -> None:
    # Given alice with two services, a sender, a template and three contacts
    services = [given_service(api, "a"), given_service(api, "b")]
    given_user(api, "alice", quota=10, service_ids=services)
    given_contacts(api, "alice", *({"email": f"r{n}@example.org", "tags": ["news"]} for n in range(3)))
    sender = api.post("/api/senders", {"email": "news@example.com", "name": "News"}, user="alice").body["sender_id"]
    body: dict[str, Any] = {
        "name": "n",
        "sender_id": sender,
        "templates": [given_template(api, "alice")],
        "recipient_rule": {"type": "tag_based", "include_tags": ["news"], "exclude_tags": []},
    }
    if starts_in is not None:
        body["scheduled_at"] = datetime.fromtimestamp(clock.now() + starts_in, UTC).isoformat()
    task_id = api.post("/api/tasks", body, user="alice").body["task_id"]
    before = control_seq()

    # When the planner has planned it
    planner.drain()

    # Then it is announced, and its services are woken now, at its time, or by their schedules
    task = TaskModel.get(task_id, consistent_read=True)
    assert control_seq() == before + 1
    routed = sorted(set(task.plan.routing))  # the routing is a cycle: each service once
    assert wake_ups(aws) == ([{"service_id": s, "reason": woken} for s in routed] if woken else [])
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=aws.dispatch_wake_queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )
    assert int(attributes["Attributes"]["ApproximateNumberOfMessagesDelayed"]) == delayed * len(routed)
