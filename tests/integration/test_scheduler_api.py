"""Scheduler control through the API: one EventBridge Scheduler schedule per email service (read
back from moto), start/stop flipping every schedule, pause/resume of a task and its place in the
dispatchers' sparse `active` index."""

from __future__ import annotations

import json
from typing import Any

import api_context
import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from core.settings import Settings
from core.states import TaskStatus
from core.storage.models import EmailServiceModel, SchedulerStateModel, TaskModel
from tests.conftest import ApiClient, FakeClock
from tests.integration.given import given_service
from tests.support.planning import seed_task

# moto answers every call it implements; fail fast on one it does not.
FAIL_FAST = Config(retries={"max_attempts": 1})


def _scheduler() -> Any:
    return boto3.client("scheduler", config=FAIL_FAST)


def _schedule(settings: Settings, service_id: str) -> dict[str, Any]:
    return dict(_scheduler().get_schedule(Name=f"dispatch-{service_id}", GroupName=settings.schedule_group))


def _states(settings: Settings, service_ids: list[str]) -> list[str]:
    return [_schedule(settings, service_id)["State"] for service_id in service_ids]


# ---------------------------------------------------------------- schedules follow services


def test_creating_a_service_creates_its_dispatch_schedule_disabled_while_stopped(api: ApiClient, aws: Settings) -> None:
    # When an admin creates a service while the scheduler has never been started
    service_id = given_service(api)
    # Then its schedule exists in the dispatch group, every minute, aimed at the dispatcher
    schedule = _schedule(aws, service_id)
    assert schedule["GroupName"] == aws.schedule_group == "DispatchScheduleGroup"
    assert schedule["ScheduleExpression"] == "rate(1 minute)"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["State"] == "DISABLED"
    target = schedule["Target"]
    assert target["Arn"] == "arn:aws:lambda:us-east-1:123456789012:function:DispatcherFunction"
    assert target["RoleArn"] == "arn:aws:iam::123456789012:role/SchedulerInvokeRole"
    assert json.loads(target["Input"]) == {"service_id": service_id}
    assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 60, "MaximumRetryAttempts": 0}
    assert target["DeadLetterConfig"] == {"Arn": "arn:aws:sqs:us-east-1:123456789012:DispatchDeadLetterQueue"}


def test_a_service_created_while_running_gets_an_enabled_schedule(api: ApiClient, aws: Settings) -> None:
    # Given the scheduler runs
    assert api.post("/api/scheduler/start").status == 200
    # When an admin creates a service
    service_id = given_service(api)
    # Then its schedule is enabled at once
    assert _states(aws, [service_id]) == ["ENABLED"]


def test_disabling_a_service_disables_its_schedule_and_enabling_restores_it(api: ApiClient, aws: Settings) -> None:
    # Given a running scheduler and a service
    assert api.post("/api/scheduler/start").status == 200
    service_id = given_service(api)
    # When an admin disables the service
    reply = api.patch(f"/api/services/{service_id}", {"enabled": False})
    # Then its schedule is disabled
    assert reply.status == 200, reply.body
    assert _states(aws, [service_id]) == ["DISABLED"]
    # When the admin enables it again
    assert api.patch(f"/api/services/{service_id}", {"enabled": True}).status == 200
    # Then the schedule is enabled again
    assert _states(aws, [service_id]) == ["ENABLED"]


def test_changing_the_quota_keeps_the_schedule_and_the_rate_picks_the_dispatcher_of_its_tier(
    api: ApiClient, aws: Settings
) -> None:
    # Given a running scheduler and a service at 20/s (the fast dispatcher)
    assert api.post("/api/scheduler/start").status == 200
    service_id = given_service(api)
    before = _schedule(aws, service_id)
    # When an admin changes its quota
    assert api.patch(f"/api/services/{service_id}", {"daily_quota": 10}).status == 200
    # Then the schedule is unchanged (the dispatcher reads pace and quota from the service)
    after = _schedule(aws, service_id)
    assert (after["State"], after["ScheduleExpression"], after["Target"]) == (
        before["State"],
        before["ScheduleExpression"],
        before["Target"],
    )
    # When it slows to one email every 2 s, its ticks go to the small paced dispatcher, and back
    assert api.patch(f"/api/services/{service_id}", {"sending_rate": 2.0}).status == 200
    paced = _schedule(aws, service_id)
    assert paced["Target"]["Arn"].endswith(":function:PacedDispatcherFunction")
    assert {**paced["Target"], "Arn": ""} == {**before["Target"], "Arn": ""}
    assert api.patch(f"/api/services/{service_id}", {"sending_rate": 0.05}).status == 200
    assert _schedule(aws, service_id)["Target"] == before["Target"]


def test_a_patch_of_a_stopped_scheduler_leaves_an_enabled_service_disabled(api: ApiClient, aws: Settings) -> None:
    # Given a stopped scheduler and a service
    service_id = given_service(api)
    # When an admin (re-)enables the service
    assert api.patch(f"/api/services/{service_id}", {"enabled": True}).status == 200
    # Then its schedule stays disabled: nothing runs while the scheduler is stopped
    assert _states(aws, [service_id]) == ["DISABLED"]


def test_a_missing_schedule_is_recreated_by_the_next_patch(api: ApiClient, aws: Settings) -> None:
    # Given a running scheduler and a service whose schedule was lost
    assert api.post("/api/scheduler/start").status == 200
    service_id = given_service(api)
    _scheduler().delete_schedule(Name=f"dispatch-{service_id}", GroupName=aws.schedule_group)
    # When an admin patches the service
    assert api.patch(f"/api/services/{service_id}", {"name": "renamed"}).status == 200
    # Then the schedule exists again, enabled
    assert _states(aws, [service_id]) == ["ENABLED"]


# ---------------------------------------------------------------- start / stop


def test_start_and_stop_flip_every_schedule_and_are_idempotent(api: ApiClient, aws: Settings, clock: FakeClock) -> None:
    # Given three services, one of them disabled
    services = [given_service(api, f"ses-{n}") for n in range(3)]
    assert api.patch(f"/api/services/{services[2]}", {"enabled": False}).status == 200

    # When an admin starts the scheduler
    started = api.post("/api/scheduler/start")
    # Then the flag is set and the enabled services' schedules run
    assert started.status == 200, started.body
    assert started.body == {"is_running": True, "services": 3, "updated_at": "2026-11-30T00:53:20Z"}
    assert SchedulerStateModel.get("scheduler").running is True
    assert _states(aws, services) == ["ENABLED", "ENABLED", "DISABLED"]

    # When the admin starts it again later
    clock.advance(60)
    again = api.post("/api/scheduler/start")
    # Then nothing changes, not even the time of the last change
    assert again.status == 200
    assert again.body == started.body
    assert _states(aws, services) == ["ENABLED", "ENABLED", "DISABLED"]

    # When the admin stops it, twice
    stopped = api.post("/api/scheduler/stop")
    stopped_again = api.post("/api/scheduler/stop")
    # Then every schedule is disabled and the flag cleared
    assert stopped.status == stopped_again.status == 200
    stopped_state = {"is_running": False, "services": 3, "updated_at": "2026-11-30T00:54:20Z"}
    assert stopped.body == stopped_again.body == stopped_state
    assert SchedulerStateModel.get("scheduler").running is False
    assert _states(aws, services) == ["DISABLED", "DISABLED", "DISABLED"]


def test_stop_before_any_start_creates_the_state_stopped(api: ApiClient) -> None:
    # When an admin stops a scheduler that was never started (no state item, no services)
    reply = api.post("/api/scheduler/stop")
    # Then the state exists and reads stopped
    assert reply.status == 200, reply.body
    assert reply.body == {"is_running": False, "services": 0, "updated_at": "2026-11-30T00:53:20Z"}
    assert SchedulerStateModel.get("scheduler").running is False


def test_start_repairs_a_schedule_that_went_missing(api: ApiClient, aws: Settings) -> None:
    # Given a running scheduler whose schedule for one service was deleted behind its back
    service_id = given_service(api)
    assert api.post("/api/scheduler/start").status == 200
    _scheduler().delete_schedule(Name=f"dispatch-{service_id}", GroupName=aws.schedule_group)
    # When an admin starts it again
    assert api.post("/api/scheduler/start").status == 200
    # Then the schedule is back, enabled
    assert _states(aws, [service_id]) == ["ENABLED"]


@pytest.mark.parametrize("action", ["start", "stop"])
def test_only_admins_start_or_stop_the_scheduler(api: ApiClient, aws: Settings, action: str) -> None:
    # Given a service
    service_id = given_service(api)
    # When a user who is not an admin tries
    reply = api.post(f"/api/scheduler/{action}", user="mallory")
    # Then it is refused and nothing changed
    assert reply.status == 403
    assert reply.body["error"] == "forbidden"
    assert list(SchedulerStateModel.scan()) == []
    assert _states(aws, [service_id]) == ["DISABLED"]


def test_start_without_a_token_is_401(api: ApiClient) -> None:
    assert api.post("/api/scheduler/start", user=None).status == 401


# ---------------------------------------------------------------- pause / resume


def _task(status: TaskStatus, clock: FakeClock, owner: str = "alice", scheduled_at: float | None = None) -> str:
    """A task in `status`, in the `active` index exactly when a dispatcher may send for it."""
    task = seed_task(owner, clock.now(), scheduled_at=scheduled_at)
    actions = [TaskModel.status.set(status)]
    if status in (TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.SENDING):
        actions += [
            TaskModel.active_partition.set("active"),
            TaskModel.active_sort.set(f"{owner}#{task.task_id}"),
        ]
    task.update(actions=actions)
    return task.task_id


def _stored(task_id: str) -> TaskModel:
    return TaskModel.get(task_id, consistent_read=True)


def _active_ids() -> list[str]:
    return [task.task_id for task in TaskModel.active.query("active")]


@pytest.mark.parametrize("status", [TaskStatus.QUEUED, TaskStatus.SENDING, TaskStatus.SCHEDULED])
def test_pausing_takes_the_task_out_of_the_active_index(api: ApiClient, clock: FakeClock, status: TaskStatus) -> None:
    # Given alice's task a dispatcher may send for
    task_id = _task(status, clock)
    assert _active_ids() == [task_id]
    # When alice pauses it
    clock.advance(5)
    reply = api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice")
    # Then it is paused and no longer in the index dispatchers pick from
    assert reply.status == 200, reply.body
    assert (reply.body["task_id"], reply.body["status"]) == (task_id, "paused")
    assert reply.body["updated_at"] == "2026-11-30T00:53:25Z"
    stored = _stored(task_id)
    assert (stored.status, stored.active_partition, stored.active_sort) == ("paused", "held", f"alice#{task_id}")
    assert _active_ids() == []


def test_pausing_a_paused_task_is_a_no_op(api: ApiClient, clock: FakeClock) -> None:
    # Given a paused task
    task_id = _task(TaskStatus.QUEUED, clock)
    assert api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice").status == 200
    # When it is paused again
    clock.advance(5)
    reply = api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice")
    # Then that succeeds and changes nothing
    assert reply.status == 200, reply.body
    assert reply.body["status"] == "paused"
    assert reply.body["updated_at"] == "2026-11-30T00:53:20Z"


def test_resuming_puts_the_task_back_in_the_active_index_as_queued(api: ApiClient, clock: FakeClock) -> None:
    # Given a paused task whose start time has passed
    task_id = _task(TaskStatus.SENDING, clock, scheduled_at=clock.now() - 60)
    assert api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice").status == 200
    # When alice resumes it
    reply = api.post(f"/api/scheduler/tasks/{task_id}/resume", user="alice")
    # Then it is queued again and back in the active index under alice
    assert reply.status == 200, reply.body
    assert reply.body["status"] == "queued"
    stored = _stored(task_id)
    assert (stored.status, stored.active_partition, stored.active_sort) == ("queued", "active", f"alice#{task_id}")
    assert _active_ids() == [task_id]


def test_resuming_before_the_start_time_makes_the_task_scheduled(api: ApiClient, clock: FakeClock) -> None:
    # Given a paused task due in an hour
    task_id = _task(TaskStatus.SCHEDULED, clock, scheduled_at=clock.now() + 3600)
    assert api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice").status == 200
    # When it is resumed
    reply = api.post(f"/api/scheduler/tasks/{task_id}/resume", user="alice")
    # Then it waits for its time again, in the active index
    assert reply.status == 200, reply.body
    assert reply.body["status"] == "scheduled"
    assert _active_ids() == [task_id]


def test_resuming_a_task_that_is_not_paused_is_a_no_op(api: ApiClient, clock: FakeClock) -> None:
    # Given a queued task
    task_id = _task(TaskStatus.QUEUED, clock)
    # When it is resumed (twice)
    replies = [api.post(f"/api/scheduler/tasks/{task_id}/resume", user="alice") for _ in range(2)]
    # Then both succeed and nothing changed
    assert [(reply.status, reply.body["status"]) for reply in replies] == [(200, "queued")] * 2
    assert _stored(task_id).updated_at == clock.now() and _active_ids() == [task_id]


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (TaskStatus.COMPLETED, "resume"),
        (TaskStatus.CANCELLED, "resume"),
        (TaskStatus.REJECTED, "resume"),
        (TaskStatus.PLANNING, "resume"),
        (TaskStatus.COMPLETED, "pause"),
        (TaskStatus.CANCELLED, "pause"),
        (TaskStatus.REJECTED, "pause"),
    ],
)
def test_impossible_moves_are_409_and_change_nothing(
    api: ApiClient, clock: FakeClock, status: TaskStatus, action: str
) -> None:
    # Given a task that cannot make this move
    task_id = _task(status, clock)
    # When alice tries
    reply = api.post(f"/api/scheduler/tasks/{task_id}/{action}", user="alice")
    # Then it is a conflict in the error shape and the task is untouched
    assert reply.status == 409, reply.body
    assert reply.body["error"] == "invalid_state"
    stored = _stored(task_id)
    assert (stored.status, stored.active_partition) == (status, None)


@pytest.mark.parametrize("action", ["pause", "resume"])
def test_another_user_gets_404_and_the_task_is_untouched(api: ApiClient, clock: FakeClock, action: str) -> None:
    # Given alice's queued task
    task_id = _task(TaskStatus.QUEUED, clock)
    # When bob tries to pause or resume it
    reply = api.post(f"/api/scheduler/tasks/{task_id}/{action}", user="bob")
    # Then it does not exist for him
    assert reply.status == 404, reply.body
    assert reply.body["error"] == "not_found"
    assert _stored(task_id).status == "queued" and _active_ids() == [task_id]


def test_an_admin_pauses_and_resumes_anyones_task(api: ApiClient, clock: FakeClock) -> None:
    # Given alice's queued task
    task_id = _task(TaskStatus.QUEUED, clock)
    # When an admin pauses and then resumes it
    paused = api.post(f"/api/scheduler/tasks/{task_id}/pause")
    resumed = api.post(f"/api/scheduler/tasks/{task_id}/resume")
    # Then both work
    assert (paused.status, paused.body["status"]) == (200, "paused")
    assert (resumed.status, resumed.body["status"]) == (200, "queued")
    assert _stored(task_id).active_sort == f"alice#{task_id}"


def test_an_unknown_task_is_404(api: ApiClient) -> None:
    reply = api.post("/api/scheduler/tasks/task_000000000000000000000000/pause", user="alice")
    assert reply.status == 404
    assert reply.body["error"] == "not_found"


def test_a_scheduler_outage_on_service_creation_is_a_503_and_writes_nothing(api: ApiClient) -> None:
    # Given EventBridge Scheduler refuses every call
    scheduler = api_context.deps().scheduler
    with Stubber(scheduler) as stubber:
        stubber.add_client_error("update_schedule", "InternalServerException", http_status_code=500)
        # When an admin creates a service
        reply = api.post("/api/services", {"name": "ses", "region": "us-east-1", "sending_rate": 1.0, "daily_quota": 5})
    # Then it is a 503 and no service exists, so retrying is safe
    assert reply.status == 503, reply.body
    assert reply.body["error"] == "service_unavailable"
    assert list(EmailServiceModel.scan()) == []
