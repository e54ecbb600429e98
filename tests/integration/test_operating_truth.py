"""After a randomized run (several users and tasks, pauses, resumes, cancels, injected SES errors,
services paused by SES and failing over, dispatchers dying between send and record), every figure
of GET /api/scheduler/status and /stats equals the truth counted from the tables."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from core.clock import utc_day
from core.dispatch import rates
from core.planning.cancellation import sweep_cancelled_task
from core.settings import Settings
from core.storage.models import EmailServiceModel, ServiceUsageModel, SubtaskModel, TaskModel
from tests.conftest import ApiClient, FakeClock
from tests.support.dispatching import World, planner_deps, start_scheduler

SEED = 20_261_202
SERVICES = {"svc-a": 0.5, "svc-b": 1.0, "svc-c": 2.0}
USERS = {"u1": ["svc-a", "svc-b"], "u2": ["svc-b", "svc-c"], "u3": ["svc-a", "svc-b", "svc-c"]}
# SES answers the wrapper injects, with their share of calls.
INJECTED = [
    (0.04, "TooManyRequestsException", "Maximum sending rate exceeded."),  # re-queued, no attempt
    (0.04, "InternalFailure", "We encountered an internal error"),  # retried later
    (0.04, "MessageRejected", "Email address is not verified."),  # failed at once
    (0.01, "SendingPausedException", "Sending is paused for this account."),  # the service fails over
]
CRASH_SHARE = 0.02  # the invocation dies after SES accepted (the subtask becomes `unknown`)


class ChaoticSes:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.client = boto3.client("sesv2", config=Config(retries={"max_attempts": 1}))

    def send_email(self, **request: Any) -> dict[str, Any]:
        roll = self.rng.random()
        for share, code, message in INJECTED:
            if roll < share:
                raise ClientError({"Error": {"Code": code, "Message": message}}, "SendEmail")
            roll -= share
        return dict(self.client.send_email(**request))


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def _cancel(api: ApiClient, task: TaskModel, settings: Settings, clock: FakeClock) -> None:
    assert api.post(f"/api/tasks/{task.task_id}/cancel", user=task.user_id).status == 200
    sweep_cancelled_task(task.task_id, planner_deps(settings, clock))  # the planner queue's job


def test_status_and_stats_equal_the_truth_after_a_randomized_run(
    aws: Settings, world: World, api: ApiClient, clock: FakeClock
) -> None:
    rng = random.Random(SEED)
    for service_id, rate in SERVICES.items():
        world.service(service_id, sending_rate=rate, daily_quota=100_000)
    for user_id, services in USERS.items():
        for _ in range(2):
            world.campaign(user_id, rng.randint(30, 60), services)
    crashes = 0

    def fault(point: str, subtask: SubtaskModel) -> None:
        nonlocal crashes
        if point == "after_send" and rng.random() < CRASH_SHARE:
            crashes += 1
            raise RuntimeError("injected: the invocation dies after SES accepted")

    for _ in range(10):
        tasks = [t for t in TaskModel.scan() if t.status not in ("completed", "cancelled", "rejected")]
        action = rng.random()
        if tasks and action < 0.15:
            victim = rng.choice(tasks)
            api.post(f"/api/scheduler/tasks/{victim.task_id}/pause", user=victim.user_id)
        elif action < 0.35:
            for paused in (t for t in tasks if t.status == "paused"):
                api.post(f"/api/scheduler/tasks/{paused.task_id}/resume", user=paused.user_id)
        elif tasks and action < 0.45:
            _cancel(api, rng.choice(tasks), aws, clock)
        for service in EmailServiceModel.scan():  # the health check finds paused accounts healthy again
            if not service.is_healthy and rng.random() < 0.5:
                service.update(actions=[EmailServiceModel.is_healthy.set(True)])
        for service_id in rng.sample(sorted(SERVICES), k=len(SERVICES)):
            try:
                world.tick(service_id, budget=rng.uniform(3.0, 8.0), ses=ChaoticSes(rng), fault=fault)
            except RuntimeError:
                clock.advance(30.0)  # the dead invocation's lease runs out before the next tick
        clock.advance(rng.uniform(1.0, 20.0))

    # Settle: one task paused, every service healthy, leases of dead invocations expired, in-flight
    # repaired; the others keep sending for a few seconds.
    open_tasks = [t for t in TaskModel.scan() if t.status in ("queued", "sending", "waiting")]
    held = rng.choice(open_tasks)
    assert api.post(f"/api/scheduler/tasks/{held.task_id}/pause", user=held.user_id).status == 200
    for service in EmailServiceModel.scan():
        service.update(actions=[EmailServiceModel.is_healthy.set(True)])
    clock.advance(120.0)
    for service_id in SERVICES:
        world.tick(service_id, budget=8.0)
    assert crashes > 0 and any(s.status == "failed" for s in SubtaskModel.scan())
    assert any(t.status == "paused" for t in TaskModel.scan()) or any(t.status == "cancelled" for t in TaskModel.scan())

    now = clock.now()
    subtasks = list(SubtaskModel.scan())
    assert not [s for s in subtasks if s.status == "sending"]
    by_task: dict[str, Counter[str]] = {}
    for subtask in subtasks:
        by_task.setdefault(subtask.task_id, Counter())[subtask.status] += 1
    window = set(rates.window(now))
    recent = [s for s in subtasks if s.status == "sent" and rates.minute_of(float(s.sent_at)) in window]
    assert recent, "the run must end with sends inside the rate window"

    status = api.get("/api/scheduler/status").body
    assert status["total_queued_subtasks"] > 0
    assert status["total_queued_subtasks"] == sum(
        1 for s in subtasks if s.status == "queued" and TaskModel.get(s.task_id).status != "cancelled"
    )
    assert status["processing_rate_per_minute"] == rates.per_minute(len(recent))
    assert status["active_services"] == len(SERVICES)

    stats = api.get("/api/scheduler/stats").body
    assert {t["task_id"] for t in stats["tasks"]} == set(by_task)
    for shown in stats["tasks"]:
        truth = by_task[shown["task_id"]]
        for status_name in ("queued", "sent", "failed", "unknown", "suppressed", "cancelled"):
            assert shown["counts"][status_name] == truth[status_name], (shown["task_id"], status_name)
        assert shown["counts"]["total"] == sum(truth.values())
        mine = sum(1 for s in recent if s.task_id == shown["task_id"])
        assert shown["rate_per_minute"] == rates.per_minute(mine)
    day = utc_day(now)
    for shown in stats["services"]:
        service_id = shown["service_id"]
        mine = sum(1 for s in recent if s.service_id == service_id)
        assert shown["rate_per_minute"] == rates.per_minute(mine)
        # Quota used today: what SES took on this service today (sent, or died after SES accepted).
        took = sum(
            1
            for s in subtasks
            if s.service_id == service_id
            and (
                (s.status == "sent" and utc_day(float(s.sent_at)) == day)
                or (s.status == "unknown" and s.failed_at is not None and utc_day(float(s.failed_at)) == day)
            )
        )
        used = ServiceUsageModel.get(service_id, day).used
        assert shown["used_today"] == used == took
        assert shown["remaining_quota"] == 100_000 - took

    # Each user sees exactly their own part of it.
    for user_id in USERS:
        own = api.get("/api/scheduler/stats", user=user_id).body
        assert {t["task_id"] for t in own["tasks"]} == {t for t in by_task if TaskModel.get(t).user_id == user_id}
        assert {s["service_id"] for s in own["services"]} == set(USERS[user_id])
