"""Tasks through the API handler: creation checks every reference, planning via the queue,
tenant isolation, bad input, cancellation with refunds."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from core.settings import Settings
from core.storage.models import SubtaskModel, TaskModel, UserModel
from tests.conftest import ApiClient
from tests.integration.given import assert_rejected, given_contacts, given_service, given_template, given_user
from tests.support.planning import PlannerDriver, subtasks_of


def _sender(api: ApiClient, user: str) -> str:
    reply = api.post("/api/senders", {"email": f"news@{user}.example.com", "name": "News"}, user=user)
    assert reply.status == 201, reply.body
    return str(reply.body["sender_id"])


@pytest.fixture
def alice(api: ApiClient) -> dict[str, Any]:
    """A user with two services, a sender, a template and 12 newsletter contacts (3 unsubscribed)."""
    services = [given_service(api, "ses-a", sending_rate=1.0), given_service(api, "ses-b", sending_rate=0.5)]
    given_user(api, "alice", quota=100, service_ids=services)
    newsletter = [{"email": f"reader{n}@example.org", "tags": ["newsletter"]} for n in range(9)]
    leaving = [{"email": f"gone{n}@example.org", "tags": ["newsletter", "unsubscribed"]} for n in range(3)]
    others = [{"email": f"other{n}@example.org", "tags": ["other"]} for n in range(4)]
    contact_ids = given_contacts(api, "alice", *newsletter, *leaving, *others)
    return {
        "services": services,
        "sender": _sender(api, "alice"),
        "template": given_template(api, "alice"),
        "newsletter": contact_ids[:9],
        "unsubscribed": contact_ids[9:12],
        "others": contact_ids[12:],
    }


def _tag_task(alice: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "name": "November newsletter",
        "sender_id": alice["sender"],
        "templates": [alice["template"]],
        "recipient_rule": {"type": "tag_based", "include_tags": ["newsletter"], "exclude_tags": ["unsubscribed"]},
        **fields,
    }


def test_tag_rule_task_is_planned_into_one_subtask_per_eligible_recipient(
    api: ApiClient, planner: PlannerDriver, alice: dict[str, Any]
) -> None:
    # When alice creates a tag-rule task through the API
    reply = api.post("/api/tasks", _tag_task(alice), user="alice")
    assert reply.status == 201, reply.body
    assert reply.body["status"] == "planning"
    task_id = reply.body["task_id"]

    # and the planner consumes its queue
    planner.drain()

    # Then the task is queued with one subtask per eligible recipient, in contact-id order
    task = api.get(f"/api/tasks/{task_id}", user="alice").body
    assert task["status"] == "queued"
    assert task["counts"]["total"] == 9 and task["counts"]["queued"] == 9
    subtasks = sorted(subtasks_of(task_id), key=lambda s: s.seq)
    assert {s.contact_id for s in subtasks} == set(alice["newsletter"])
    assert [s.contact_id for s in subtasks] == sorted(alice["newsletter"])
    assert {s.service_id for s in subtasks} <= set(alice["services"])
    assert api.get("/api/users/alice", user="alice").body["remaining_quota"] == 91

    # When the planner runs again, nothing changes
    before = sorted((s.contact_id, s.service_id, s.seq) for s in subtasks)
    planner.enqueue(task_id)
    planner.drain()
    assert sorted((s.contact_id, s.service_id, s.seq) for s in subtasks_of(task_id)) == before
    assert api.get("/api/users/alice", user="alice").body["remaining_quota"] == 91


def test_explicit_contacts_beyond_remaining_quota_are_refused_up_front(api: ApiClient, alice: dict[str, Any]) -> None:
    api.call("PATCH", "/api/services/" + alice["services"][0], {"enabled": True})
    UserModel("alice").update(actions=[UserModel.remaining_quota.set(8)])
    body = {**_tag_task(alice), "contacts": alice["newsletter"]}
    del body["recipient_rule"]

    reply = api.post("/api/tasks", body, user="alice")

    assert reply.status == 409
    assert reply.body["error"] == "insufficient_quota"
    assert "9" in reply.body["message"] and "8" in reply.body["message"]
    assert TaskModel.count() == 0


def test_another_user_gets_404_for_tasks_and_resources(api: ApiClient, alice: dict[str, Any]) -> None:
    given_user(api, "bob", quota=100, service_ids=alice["services"])
    task_id = api.post("/api/tasks", _tag_task(alice), user="alice").body["task_id"]

    assert api.get(f"/api/tasks/{task_id}", user="bob").status == 404
    assert api.post(f"/api/tasks/{task_id}/cancel", user="bob").status == 404
    assert api.get("/api/tasks", user="bob").body["tasks"] == []
    # bob cannot use alice's sender, template or contacts in his own task
    bob_sender = _sender(api, "bob")
    bob_template = given_template(api, "bob")
    assert_rejected(api.post("/api/tasks", _tag_task(alice), user="bob"), "sender_id", 404)
    foreign_template = _tag_task(alice, sender_id=bob_sender)
    assert_rejected(api.post("/api/tasks", foreign_template, user="bob"), "templates[0]", 404)
    foreign_contacts = {**_tag_task(alice, sender_id=bob_sender, templates=[bob_template]), "contacts": alice["others"]}
    assert_rejected(api.post("/api/tasks", foreign_contacts, user="bob"), "contacts[0]", 404)
    assert TaskModel.count() == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": None}, "name"),
        ({"templates": "tpl"}, "templates"),
        ({"templates": []}, "templates"),
        ({"contacts": ["x"] * 5001}, "contacts"),
        ({"recipient_rule": {"type": "everyone", "include_tags": ["a"]}}, "recipient_rule.type"),
        ({"recipient_rule": {"type": "tag_based", "include_tags": []}}, "recipient_rule.include_tags"),
        ({"recipient_rule": {"type": "tag_based", "include_tags": ["bad tag!"]}}, "recipient_rule.include_tags[0]"),
        ({"recipient_rule": None}, "recipient_rule"),
        ({"scheduled_at": "2026-12-01T09:00:00"}, "scheduled_at"),
        ({"scheduled_at": "tomorrow"}, "scheduled_at"),
        ({"priority": 5}, "priority"),
    ],
)
def test_bad_task_input_is_a_4xx_naming_the_field_and_writes_nothing(
    api: ApiClient, alice: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    body = _tag_task(alice, **change)
    body = {key: value for key, value in body.items() if not (key == "name" and value is None)}

    reply = api.post("/api/tasks", body, user="alice")

    assert 400 <= reply.status < 500, reply.body
    assert any(detail["field"].startswith(field) for detail in reply.body["details"]), reply.body
    assert TaskModel.count() == 0


def test_unknown_template_is_404_naming_it(api: ApiClient, alice: dict[str, Any]) -> None:
    reply = api.post("/api/tasks", _tag_task(alice, templates=[alice["template"], "tpl_nope"]), user="alice")
    assert_rejected(reply, "templates[1]", 404)
    assert TaskModel.count() == 0


def test_user_without_an_enabled_service_cannot_create_tasks(api: ApiClient, alice: dict[str, Any]) -> None:
    for service_id in alice["services"]:
        assert api.patch(f"/api/services/{service_id}", {"enabled": False}).status == 200

    reply = api.post("/api/tasks", _tag_task(alice), user="alice")

    assert reply.status == 409 and reply.body["error"] == "no_service"
    assert TaskModel.count() == 0


def test_planner_queue_outage_is_a_503_and_leaves_the_task_rejected(
    api: ApiClient, aws: Settings, alice: dict[str, Any]
) -> None:
    boto3.client("sqs").delete_queue(QueueUrl=aws.planner_queue_url)

    reply = api.post("/api/tasks", _tag_task(alice), user="alice")

    assert reply.status == 503 and reply.body["error"] == "service_unavailable"
    (task,) = list(TaskModel.scan())
    assert (task.status, task.reason) == ("rejected", "planner_unavailable")


def test_cancel_after_planning_cancels_queued_subtasks_and_refunds(
    api: ApiClient, planner: PlannerDriver, alice: dict[str, Any]
) -> None:
    task_id = api.post("/api/tasks", _tag_task(alice), user="alice").body["task_id"]
    planner.drain()
    assert api.get("/api/users/alice", user="alice").body["remaining_quota"] == 91

    reply = api.post(f"/api/tasks/{task_id}/cancel", user="alice")
    assert reply.status == 200 and reply.body["status"] == "cancelled"
    planner.drain()

    task = api.get(f"/api/tasks/{task_id}", user="alice").body
    assert task["counts"]["cancelled"] == 9 and task["counts"]["queued"] == 0
    assert {s.status for s in subtasks_of(task_id)} == {"cancelled"}
    assert all(s.queue_key is None for s in subtasks_of(task_id))
    assert api.get("/api/users/alice", user="alice").body["remaining_quota"] == 100
    # Cancelling again is harmless and refunds nothing twice
    assert api.post(f"/api/tasks/{task_id}/cancel", user="alice").status == 200
    planner.drain()
    assert api.get("/api/users/alice", user="alice").body["remaining_quota"] == 100


def test_cancel_mid_planning_refunds_exactly_the_reservation(
    api: ApiClient, planner: PlannerDriver, alice: dict[str, Any]
) -> None:
    more = [{"email": f"extra{n}@example.org", "tags": ["newsletter"]} for n in range(30)]
    given_contacts(api, "alice", *more)
    task_id = api.post("/api/tasks", _tag_task(alice), user="alice").body["task_id"]
    # The planner counts, reserves and writes a few pages, then the user cancels
    task = TaskModel.get(task_id)
    while not task.plan.written:
        planner.drain(chunks_per_invocation=4, page_size=5, max_invocations=1, must_settle=False)
        task.refresh()
    assert task.quota_reserved == 39 and 0 < task.plan.written < 39

    assert api.post(f"/api/tasks/{task_id}/cancel", user="alice").status == 200
    planner.drain(page_size=5)

    assert api.get("/api/users/alice", user="alice").body["remaining_quota"] == 100
    assert {s.status for s in subtasks_of(task_id)} <= {"cancelled"}
    assert SubtaskModel.count() == len(subtasks_of(task_id))


def test_a_completed_plan_cannot_be_cancelled_twice_into_a_different_state(
    api: ApiClient, alice: dict[str, Any]
) -> None:
    task_id = api.post("/api/tasks", _tag_task(alice), user="alice").body["task_id"]
    TaskModel(task_id).update(actions=[TaskModel.status.set("completed")])

    reply = api.post(f"/api/tasks/{task_id}/cancel", user="alice")

    assert reply.status == 409 and reply.body["error"] == "invalid_state"


def test_tasks_list_shows_own_tasks_newest_first(api: ApiClient, alice: dict[str, Any]) -> None:
    first = api.post("/api/tasks", _tag_task(alice, name="first"), user="alice").body["task_id"]
    second = api.post("/api/tasks", _tag_task(alice, name="second"), user="alice").body["task_id"]

    page = api.get("/api/tasks", user="alice", query="limit=1").body
    assert [t["task_id"] for t in page["tasks"]] == [second]
    rest = api.get("/api/tasks", user="alice", query=f"limit=1&cursor={page['cursor']}").body
    assert [t["task_id"] for t in rest["tasks"]] == [first]
    assert_rejected(api.get("/api/tasks", user="alice", query="cursor=%%%"), "cursor")


def test_cancel_while_a_planner_run_holds_the_lease_still_refunds_everything(
    api: ApiClient, aws: Settings, alice: dict[str, Any], clock: Any
) -> None:
    import uuid

    from core.planning.cancellation import SweepBusy, sweep_cancelled_task
    from core.planning.planner import PlannerDeps, PlanOutcome, plan_task

    more = [{"email": f"extra{n}@example.org", "tags": ["newsletter"]} for n in range(30)]
    given_contacts(api, "alice", *more)
    task_id = api.post("/api/tasks", _tag_task(alice), user="alice").body["task_id"]
    cancelled = []

    def seconds_left() -> float:
        # The user cancels while this run is writing (after count, reserve and a write chunk)
        if not cancelled and TaskModel.get(task_id).plan.written:
            cancelled.append(True)
            assert api.post(f"/api/tasks/{task_id}/cancel", user="alice").status == 200
            with pytest.raises(SweepBusy):  # the sweep cannot start while the planner holds the lease
                sweep_cancelled_task(task_id, deps_for("sweep-early"))
        return 10.0

    def deps_for(owner: str) -> PlannerDeps:
        return PlannerDeps(
            clock=clock,
            dynamodb=boto3.client("dynamodb"),
            subtasks_table=aws.subtasks_table,
            seconds_left=seconds_left,
            owner=owner,
            lease_seconds=300.0,
            page_size=3,
        )

    outcome = plan_task(task_id, deps_for(uuid.uuid4().hex))

    assert outcome is PlanOutcome.CANCELLED
    task = TaskModel.get(task_id)
    assert task.quota_reserved == 39 and 0 < task.plan.written < 39
    assert sweep_cancelled_task(task_id, deps_for("sweep")) is PlanOutcome.DONE
    assert api.get("/api/users/alice", user="alice").body["remaining_quota"] == 100
    assert {s.status for s in subtasks_of(task_id)} <= {"cancelled"}
