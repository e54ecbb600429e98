"""GET /api/scheduler/status and /stats: figures from counters, scoped to the caller, and a cost in
requests that does not grow with subtasks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from botocore.hooks import HierarchicalEmitter

from core.clock import iso
from core.dispatch import rates
from core.settings import Settings
from core.storage.models import EmailServiceModel, SchedulerStateModel, SubtaskModel, TaskModel
from tests.conftest import ApiClient, FakeClock
from tests.support.dispatching import World, start_scheduler


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def _stats_task(body: dict, task_id: str) -> dict:
    (found,) = [t for t in body["tasks"] if t["task_id"] == task_id]
    return found


def test_status_and_stats_follow_a_campaign(world: World, api: ApiClient, clock: FakeClock) -> None:
    world.service("svc-a", sending_rate=1.0, daily_quota=1000)
    world.service("svc-b", sending_rate=2.0, daily_quota=50)
    EmailServiceModel("svc-b").update(
        actions=[EmailServiceModel.is_healthy.set(False), EmailServiceModel.health_reason.set("sending_paused")]
    )
    SchedulerStateModel("scheduler").update(actions=[SchedulerStateModel.last_health_check.set(clock.now() - 30)])
    task_id = world.campaign("alice", 30, ["svc-a"])
    other = world.campaign("bob", 5, ["svc-a"])

    status = api.get("/api/scheduler/status").body
    assert status == {
        "is_running": True,
        "active_services": 1,  # svc-b is unhealthy
        "total_queued_subtasks": 35,
        "processing_rate": "0 emails/min",
        "processing_rate_per_minute": 0.0,
        "last_health_check": iso(clock.now() - 30),
    }

    report = world.tick("svc-a", budget=20.0)  # about 20 sends at 1/s, alice and bob in turn
    assert report.sent >= 19

    status = api.get("/api/scheduler/status").body
    assert status["total_queued_subtasks"] == 35 - report.sent
    assert status["processing_rate_per_minute"] == report.sent / 5
    assert status["processing_rate"] == f"{report.sent / 5:g} emails/min"

    stats = api.get("/api/scheduler/stats").body
    mine = _stats_task(stats, task_id)
    theirs = _stats_task(stats, other)
    assert mine["counts"]["sent"] + theirs["counts"]["sent"] == report.sent
    assert mine["counts"]["queued"] == 30 - mine["counts"]["sent"]
    assert mine["rate_per_minute"] == mine["counts"]["sent"] / 5
    assert mine["service_ids"] == ["svc-a"] and mine["estimated_finish"] is not None
    services = {s["service_id"]: s for s in stats["services"]}
    assert services["svc-a"]["used_today"] == report.sent
    assert services["svc-a"]["remaining_quota"] == 1000 - report.sent
    assert services["svc-a"]["usage_percentage"] == round(100 * report.sent / 1000, 1)
    assert services["svc-a"]["configured_rate_per_minute"] == 60.0
    assert services["svc-a"]["rate_per_minute"] == report.sent / 5
    assert services["svc-a"]["last_sent"] is not None
    assert (services["svc-b"]["is_healthy"], services["svc-b"]["reason"]) == (False, "sending_paused")

    # Users see their own tasks and only their services.
    alice = api.get("/api/scheduler/stats", user="alice").body
    assert [t["task_id"] for t in alice["tasks"]] == [task_id]
    assert [s["service_id"] for s in alice["services"]] == ["svc-a"]
    alice_status = api.get("/api/scheduler/status", user="alice").body
    assert alice_status["total_queued_subtasks"] == mine["counts"]["queued"]
    assert alice_status["processing_rate_per_minute"] == mine["counts"]["sent"] / 5

    # Five minutes later the window is empty again; finished tasks stay in stats.
    clock.advance(400)
    world.tick("svc-a", budget=30.0)
    assert api.get("/api/scheduler/status").body["total_queued_subtasks"] == 0
    stats = api.get("/api/scheduler/stats").body
    assert _stats_task(stats, task_id)["status"] == "completed"
    assert _stats_task(stats, task_id)["estimated_finish"] is None
    # The task keeps its sent counts of the last minutes only: older ones went with a later update.
    kept = TaskModel.get(task_id).sent_minutes.as_dict()
    assert kept and set(kept) <= set(rates.window(clock.now()))


def test_a_user_without_a_user_record_is_refused(world: World, api: ApiClient) -> None:
    assert api.get("/api/scheduler/stats", user="mallory").status == 403
    assert api.get("/api/scheduler/status", user=None).status == 401


@contextmanager
def requests_made() -> Iterator[list[tuple[str, str]]]:
    """(operation, table or index) of every DynamoDB request made in the block, by any client."""
    made: list[tuple[str, str]] = []
    original = HierarchicalEmitter._emit

    def emit(self: HierarchicalEmitter, event_name: str, *args: Any, **kwargs: Any) -> Any:
        if event_name.startswith("provide-client-params.dynamodb."):
            params = kwargs.get("params") or {}
            target = params.get("IndexName") or params.get("TableName") or ",".join(params.get("RequestItems", {}))
            made.append((event_name.rsplit(".", 1)[1], str(target)))
        return original(self, event_name, *args, **kwargs)

    HierarchicalEmitter._emit = emit  # type: ignore[method-assign]
    try:
        yield made
    finally:
        HierarchicalEmitter._emit = original  # type: ignore[method-assign]


def test_status_and_stats_cost_the_same_requests_with_ten_times_more_subtasks(
    aws: Settings, world: World, api: ApiClient, clock: FakeClock
) -> None:
    world.service("svc-a", sending_rate=1.0)
    world.campaign("alice", 20, ["svc-a"])
    world.campaign("bob", 20, ["svc-a"])

    def requests() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        with requests_made() as status_calls:
            assert api.get("/api/scheduler/status").status == 200
        with requests_made() as stats_calls:
            assert api.get("/api/scheduler/stats").status == 200
        return status_calls, stats_calls

    small = requests()
    for made in small:
        assert made and not [call for call in made if aws.subtasks_table in call[1] or call[1] == "queue"]
        assert {operation for operation, target in made if target == aws.services_table} <= {"Scan"}
    # Ten times the subtasks in the same number of tasks: bob's task is replaced by one of 380.
    for task_id in world.tasks["bob"]:
        TaskModel(task_id).delete()
    world.tasks["bob"] = []
    world.campaign("bob", 380, ["svc-a"])
    assert SubtaskModel.count() >= 400  # bob's first subtasks stay, orphaned

    assert requests() == small
