"""Every sample event in events/ (valid for `sam local invoke -e`) drives its handler."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.storage.models import TaskModel, UserModel
from tests.conftest import ApiClient
from tests.support.planning import BudgetContext, seed_contacts, seed_service, seed_task, seed_user

EVENTS = Path(__file__).resolve().parents[2] / "events"


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def _invoke_api(api: ApiClient, name: str) -> tuple[int, Any]:
    import api_handler

    reply = api_handler.lambda_handler(load_event(name), BudgetContext(0))
    return reply["statusCode"], json.loads(reply["body"])


def test_create_user_event_creates_the_user(api: ApiClient) -> None:
    status, body = _invoke_api(api, "api_create_user.json")
    assert status == 201 and body["user_id"] == "alice"
    assert UserModel.get("alice").quota == 1000


def test_list_services_event_lists_services(api: ApiClient) -> None:
    status, body = _invoke_api(api, "api_list_services.json")
    assert status == 200 and body["services"] == []


def test_create_task_event_reports_its_unknown_sender(api: ApiClient) -> None:
    api.post("/api/users", {"user_id": "alice", "email": "alice@example.com", "quota": 10})
    status, body = _invoke_api(api, "api_create_task.json")
    assert status == 404 and body["details"][0]["field"] == "sender_id"


def test_planner_event_plans_the_named_task(planner: Any, aws: Settings, clock: Any) -> None:
    import planner_handler

    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 10, ["svc"], now)
    seed_contacts("alice", 2, now, tags=["newsletter"])
    task = seed_task("alice", now, include=["newsletter"])
    # The sample names "task_example"; plan a real task under that id
    TaskModel("task_example", **{k: v for k, v in task.attribute_values.items() if k != "task_id"}).save()

    result = planner_handler.lambda_handler(load_event("planner_plan_task.json"), BudgetContext(20))

    assert result == {"batchItemFailures": []}
    assert TaskModel.get("task_example").status == "queued"


def test_dispatcher_event_sends_the_named_services_queue(aws: Settings, clock: Any) -> None:
    import dispatcher_handler

    from tests.support.dispatching import World, start_scheduler

    start_scheduler(clock.now())
    world = World(aws, clock)
    world.service("svc_example", sending_rate=0.01)
    task_id = world.campaign("alice", 3, ["svc_example"])
    dispatcher_handler.runtime.cache_clear()
    dispatcher_handler.runtime().clock = clock

    summary = dispatcher_handler.lambda_handler(load_event("dispatcher_tick.json"), BudgetContext(20))

    assert summary["sent"] == 3 and summary["stop_reason"] == "no_work"
    assert TaskModel.get(task_id).status == "completed"
