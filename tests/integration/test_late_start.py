"""The late-start guard through the API and the real dispatcher on moto, with an injected clock: a
task whose sending would begin more than its max_lateness after its time expires with a reason and
sends nothing; send-late sends it all; a task within its limit, or one that began, is sent; cancel
refunds an expired task; only its owner (or an admin) confirms it (core.late_start)."""

from __future__ import annotations

from typing import Any

import pytest

from core.clock import iso
from core.dispatch.dispatcher import StopReason
from core.late_start import expire_if_late
from core.settings import Settings, load_settings
from core.states import SubtaskStatus, TaskStatus
from core.storage.models import SubtaskModel, TaskModel
from tests.conftest import ApiClient, FakeClock
from tests.integration.given import assert_rejected, given_contacts, given_template, given_user
from tests.integration.test_wake_ups_api import control_seq, wake_ups
from tests.support.dispatching import SENDER_DOMAIN, World, start_scheduler, task
from tests.support.planning import PlannerDriver, subtasks_of

HOUR = 3_600.0
DAY = 86_400.0
RECIPIENTS = 6


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())  # running, and the sender's domain verified in SES
    return World(aws, clock)


@pytest.fixture
def alice(api: ApiClient, world: World) -> dict[str, Any]:
    """alice on one service (1 email/s), with a sender, a template and six newsletter readers."""
    world.service("svc-a", sending_rate=1.0)
    given_user(api, "alice", quota=100, service_ids=["svc-a"])
    given_contacts(api, "alice", *({"email": f"reader{n}@example.org", "tags": ["news"]} for n in range(RECIPIENTS)))
    sender = api.post("/api/senders", {"email": f"news@{SENDER_DOMAIN}", "name": "News"}, user="alice")
    assert sender.status == 201, sender.body
    return {"sender": sender.body["sender_id"], "template": given_template(api, "alice")}


def _create(api: ApiClient, alice: dict[str, Any], **fields: Any) -> Any:
    body = {
        "name": "newsletter",
        "sender_id": alice["sender"],
        "templates": [alice["template"]],
        "recipient_rule": {"type": "tag_based", "include_tags": ["news"]},
        **fields,
    }
    return api.post("/api/tasks", body, user="alice")


def _planned(api: ApiClient, planner: PlannerDriver, alice: dict[str, Any], **fields: Any) -> str:
    reply = _create(api, alice, **fields)
    assert reply.status == 201, reply.body
    planner.drain()
    return str(reply.body["task_id"])


def _stopped_until(api: ApiClient, clock: FakeClock, instant: float) -> None:
    """The scheduler is stopped, nothing sends, until `instant`; then an admin starts it again."""
    assert api.post("/api/scheduler/stop").status == 200
    clock.current = instant
    assert api.post("/api/scheduler/start").status == 200


def _statuses(task_id: str) -> list[str]:
    return sorted(str(subtask.status) for subtask in subtasks_of(task_id))


def _stats_of(api: ApiClient, task_id: str, user: str = "alice") -> dict[str, Any]:
    (found,) = [t for t in api.get("/api/scheduler/stats", user=user).body["tasks"] if t["task_id"] == task_id]
    return dict(found)


def test_a_task_started_25_hours_late_expires_and_send_late_sends_it_all(
    api: ApiClient, planner: PlannerDriver, world: World, clock: FakeClock, alice: dict[str, Any]
) -> None:
    # Given a campaign scheduled for T, planned
    due = clock.now() + HOUR
    task_id = _planned(api, planner, alice, scheduled_at=iso(due))
    assert task(task_id).status == TaskStatus.SCHEDULED
    # and the scheduler stopped until T + 25 h
    _stopped_until(api, clock, due + 25 * HOUR)

    # When the service's dispatcher runs
    report = world.tick("svc-a", budget=20.0)

    # Then nothing is sent and the task is expired with how late it would have begun
    assert (report.sent, report.stop_reason) == (0, StopReason.NO_WORK)
    expired = api.get(f"/api/tasks/{task_id}", user="alice").body
    assert (expired["status"], expired["reason"]) == ("expired", "late_start:25h00m")
    assert expired["counts"]["queued"] == RECIPIENTS and expired["counts"]["sent"] == 0
    assert _statuses(task_id) == ["queued"] * RECIPIENTS
    # its quota stays reserved, as for a paused task
    assert api.get("/api/users/alice", user="alice").body["remaining_quota"] == 100 - RECIPIENTS
    # status and stats show it
    stats = _stats_of(api, task_id)
    assert (stats["status"], stats["reason"], stats["counts"]["queued"]) == ("expired", "late_start:25h00m", 6)
    assert api.get("/api/scheduler/status", user="alice").body["total_queued_subtasks"] == RECIPIENTS
    # and a later run still sends nothing
    clock.advance(60)
    assert world.tick("svc-a", budget=20.0).sent == 0

    # When alice confirms sending it anyway
    reply = api.post(f"/api/scheduler/tasks/{task_id}/send-late", user="alice")

    # Then it is queued, confirmed, without its reason, and the next run sends all of it
    assert reply.status == 200, reply.body
    assert (reply.body["status"], reply.body["reason"], reply.body["late_start_confirmed"]) == ("queued", None, True)
    assert world.tick("svc-a", budget=20.0).sent == RECIPIENTS
    done = api.get(f"/api/tasks/{task_id}", user="alice").body
    assert (done["status"], done["counts"]["sent"]) == ("completed", RECIPIENTS)
    assert _statuses(task_id) == ["sent"] * RECIPIENTS
    assert api.get("/api/users/alice", user="alice").body["remaining_quota"] == 100 - RECIPIENTS


def test_a_task_starting_within_its_max_lateness_is_sent(
    api: ApiClient, planner: PlannerDriver, world: World, clock: FakeClock, alice: dict[str, Any]
) -> None:
    due = clock.now() + HOUR
    task_id = _planned(api, planner, alice, scheduled_at=iso(due))
    _stopped_until(api, clock, due + DAY)  # exactly 24 h late: the limit itself is not past

    assert world.tick("svc-a", budget=20.0).sent == RECIPIENTS
    assert task(task_id).status == TaskStatus.COMPLETED


def test_a_max_lateness_of_an_hour_and_the_creation_time_as_reference(
    api: ApiClient, planner: PlannerDriver, world: World, clock: FakeClock, alice: dict[str, Any]
) -> None:
    # Given two campaigns sent as soon as planned (no scheduled_at), one allowing an hour's delay
    strict = _planned(api, planner, alice, max_lateness=3_600)
    relaxed = _planned(api, planner, alice)
    assert api.get(f"/api/tasks/{strict}", user="alice").body["max_lateness"] == 3_600
    # When sending begins two hours after their creation
    _stopped_until(api, clock, clock.now() + 2 * HOUR)
    report = world.tick("svc-a", budget=30.0)
    # Then the strict one expired and the other was sent
    assert (task(strict).status, task(strict).reason) == (TaskStatus.EXPIRED, "late_start:2h00m")
    assert task(relaxed).status == TaskStatus.COMPLETED
    assert report.sent == RECIPIENTS
    assert _statuses(strict) == ["queued"] * RECIPIENTS


def test_a_task_that_began_then_stalls_two_days_is_never_expired(
    api: ApiClient, planner: PlannerDriver, world: World, clock: FakeClock, alice: dict[str, Any]
) -> None:
    # Given a campaign that sent part of its emails (its run ran out of time)
    task_id = _planned(api, planner, alice, max_lateness=3_600)
    first = world.tick("svc-a", budget=2.5)
    assert 0 < first.sent < RECIPIENTS
    assert task(task_id).status == TaskStatus.SENDING
    # When sending stalls two days (the scheduler stopped), then resumes
    _stopped_until(api, clock, clock.now() + 2 * DAY)
    second = world.tick("svc-a", budget=30.0)
    # Then the rest is sent: a campaign that began is finished, however late
    assert first.sent + second.sent == RECIPIENTS
    assert task(task_id).status == TaskStatus.COMPLETED


def test_cancelling_an_expired_task_cancels_its_queue_and_refunds_it(
    api: ApiClient, planner: PlannerDriver, world: World, clock: FakeClock, alice: dict[str, Any]
) -> None:
    task_id = _planned(api, planner, alice, max_lateness=600)
    _stopped_until(api, clock, clock.now() + HOUR)
    world.tick("svc-a", budget=10.0)
    assert task(task_id).status == TaskStatus.EXPIRED  # out of the `active` index, in `held`
    assert task(task_id).active_partition == "held"

    reply = api.post(f"/api/tasks/{task_id}/cancel", user="alice")
    assert reply.status == 200, reply.body
    planner.drain()  # the refund sweep

    cancelled = task(task_id)
    assert cancelled.status == TaskStatus.CANCELLED
    assert (cancelled.counts.cancelled, cancelled.counts.queued) == (RECIPIENTS, 0)
    assert _statuses(task_id) == ["cancelled"] * RECIPIENTS
    assert api.get("/api/users/alice", user="alice").body["remaining_quota"] == 100
    # and no longer something to confirm
    assert api.post(f"/api/scheduler/tasks/{task_id}/send-late", user="alice").status == 409


@pytest.mark.parametrize("value", [59, 31_536_001, "3600", 3_600.5, True, -1])
def test_a_bad_max_lateness_is_refused_naming_it_and_nothing_is_written(
    api: ApiClient, alice: dict[str, Any], value: Any
) -> None:
    reply = _create(api, alice, max_lateness=value)
    assert_rejected(reply, "max_lateness")
    assert TaskModel.count() == 0


def test_only_the_owner_or_an_admin_sends_a_task_late(
    api: ApiClient, planner: PlannerDriver, world: World, clock: FakeClock, alice: dict[str, Any]
) -> None:
    given_user(api, "bob", quota=100, service_ids=["svc-a"])
    task_id = _planned(api, planner, alice, max_lateness=600)
    _stopped_until(api, clock, clock.now() + HOUR)
    world.tick("svc-a", budget=10.0)
    assert task(task_id).status == TaskStatus.EXPIRED

    # bob, another tenant, cannot learn that it exists
    reply = api.post(f"/api/scheduler/tasks/{task_id}/send-late", user="bob")
    assert (reply.status, reply.body["error"]) == (404, "not_found")
    assert task(task_id).status == TaskStatus.EXPIRED
    assert api.post("/api/scheduler/tasks/task_unknown/send-late", user="alice").status == 404
    assert api.post(f"/api/scheduler/tasks/{task_id}/send-late", user=None).status == 401
    # an admin may
    reply = api.post(f"/api/scheduler/tasks/{task_id}/send-late")
    assert (reply.status, reply.body["status"]) == (200, "queued")
    # and a repeat is a no-op
    again = api.post(f"/api/scheduler/tasks/{task_id}/send-late", user="alice")
    assert (again.status, again.body["status"], again.body["late_start_confirmed"]) == (200, "queued", True)


def test_send_late_needs_an_expired_task_and_resume_points_to_it(
    api: ApiClient, planner: PlannerDriver, world: World, clock: FakeClock, alice: dict[str, Any]
) -> None:
    task_id = _planned(api, planner, alice, scheduled_at=iso(clock.now() + HOUR))
    # a task that is not expired is not sent late
    reply = api.post(f"/api/scheduler/tasks/{task_id}/send-late", user="alice")
    assert (reply.status, reply.body["error"]) == (409, "not_expired")
    assert task(task_id).late_start_confirmed is None

    _stopped_until(api, clock, clock.now() + 2 * DAY)
    world.tick("svc-a", budget=10.0)
    assert task(task_id).status == TaskStatus.EXPIRED
    # an expired task is not resumed nor paused: send-late is the way
    reply = api.post(f"/api/scheduler/tasks/{task_id}/resume", user="alice")
    assert (reply.status, reply.body["error"]) == (409, "task_expired")
    assert "send-late" in reply.body["message"]
    assert api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice").status == 409
    assert task(task_id).status == TaskStatus.EXPIRED


def test_send_late_is_announced_and_wakes_the_tasks_services(
    api: ApiClient, planner: PlannerDriver, world: World, clock: FakeClock, alice: dict[str, Any], aws: Settings
) -> None:
    task_id = _planned(api, planner, alice, max_lateness=600)
    _stopped_until(api, clock, clock.now() + HOUR)
    world.tick("svc-a", budget=10.0)
    assert task(task_id).status == TaskStatus.EXPIRED
    wake_ups(aws), wake_ups(aws, paced=True)  # drained: the start's
    before = control_seq()

    assert api.post(f"/api/scheduler/tasks/{task_id}/send-late", user="alice").status == 200

    assert control_seq() == before + 1
    assert wake_ups(aws) + wake_ups(aws, paced=True) == [{"service_id": "svc-a", "reason": "resume"}]


def test_two_dispatchers_finding_a_task_late_at_once_move_it_once(
    world: World, clock: FakeClock, aws: Settings
) -> None:
    # Given a campaign routed over two services, both dispatchers having read it before either wrote
    world.service("svc-a")
    world.service("svc-b")
    task_id = world.campaign("carol", 10, ["svc-a", "svc-b"])
    seen_by_a, seen_by_b = task(task_id), task(task_id)
    assert {s.service_id for s in subtasks_of(task_id)} == {"svc-a", "svc-b"}
    before = control_seq()
    clock.advance(DAY + 61)

    # When both apply the guard
    a_skips = expire_if_late(seen_by_a, clock.now(), DAY)
    clock.advance(120)
    b_skips = expire_if_late(seen_by_b, clock.now(), DAY)

    # Then both leave it out, and it was moved (and announced) once, with the first one's reason
    assert a_skips and b_skips
    stored = task(task_id)
    assert (stored.status, stored.reason) == (TaskStatus.EXPIRED, "late_start:24h01m")
    assert control_seq() == before + 1
    # and their runs send nothing
    assert world.tick("svc-a", budget=5.0).sent == 0 and world.tick("svc-b", budget=5.0).sent == 0
    assert all(s.status == SubtaskStatus.QUEUED for s in SubtaskModel.scan())


def test_a_stale_read_cannot_expire_a_task_that_began_meanwhile(world: World, clock: FakeClock) -> None:
    world.service("svc-a")
    task_id = world.campaign("carol", 4, ["svc-a"])
    stale = task(task_id)  # read before another dispatcher recorded a send
    TaskModel(task_id).update(actions=[TaskModel.counts["sent"].add(1)])  # type: ignore[index]
    clock.advance(2 * DAY)

    assert expire_if_late(stale, clock.now(), DAY)  # late as read: left out of this look
    assert task(task_id).status == TaskStatus.QUEUED  # but the write's condition refused the move
    assert world.tick("svc-a", budget=10.0).sent == 4  # the next look sends it


class _StopAfterClaim(Exception):
    """A tick that dies between its first claim and its first send (its counters never flushed)."""


def test_a_first_claim_marks_the_task_begun_so_a_late_look_elsewhere_cannot_expire_it(
    world: World, clock: FakeClock
) -> None:
    # Given a campaign over two services allowing an hour's delay, read by svc-b's dispatcher
    world.service("svc-a")
    world.service("svc-b")
    task_id = world.campaign("carol", 8, ["svc-a", "svc-b"])
    TaskModel(task_id).update(actions=[TaskModel.max_lateness.set(3_600)])
    stale = task(task_id)
    assert stale.began_at is None
    # When svc-a's dispatcher claims its first emails 59 minutes after the task's time, then dies
    # before any send or counter flush
    clock.advance(59 * 60)
    claimed_at = clock.now()

    def die(point: str, subtask: SubtaskModel) -> None:
        if point == "after_claim":
            raise _StopAfterClaim

    with pytest.raises(_StopAfterClaim):
        world.tick("svc-a", budget=5.0, fault=die)
    # Then the task is marked begun at that claim, its counters still show nothing sent
    begun = task(task_id)
    assert begun.began_at == claimed_at and begun.counts.sent in (None, 0)

    # When svc-b's dispatcher first looks two minutes later (61 minutes late), fresh or stale
    clock.advance(120)
    assert not expire_if_late(begun, clock.now(), DAY)  # a fresh read: begun, not expirable
    assert expire_if_late(stale, clock.now(), DAY)  # late as read: left out of this look
    # Then it was not expired (the condition on began_at refused the move) and both services send it
    assert task(task_id).status == TaskStatus.QUEUED
    clock.advance(60)  # svc-a's dead tick's lease has expired
    assert world.tick("svc-b", budget=10.0).sent + world.tick("svc-a", budget=10.0).sent == 8
    done = task(task_id)
    assert done.status == TaskStatus.COMPLETED and done.began_at == claimed_at  # the first claim's time stays


def test_a_first_claim_after_an_unannounced_expiry_is_refused_and_sends_nothing(world: World, clock: FakeClock) -> None:
    # Given a dispatcher that read a queued task, which another dispatcher then expires; the move
    # is written but its announcement has not landed when this one claims
    world.service("svc-a")
    task_id = world.campaign("carol", 5, ["svc-a"])
    expired: list[str] = []

    def expire_behind_its_back(point: str, subtask: SubtaskModel) -> None:
        if point == "before_claim" and not expired:
            TaskModel(task_id).update(actions=[TaskModel.status.set(TaskStatus.EXPIRED)])
            expired.append(task_id)

    # When it claims
    report = world.tick("svc-a", budget=10.0, fault=expire_behind_its_back)

    # Then the claim was refused for the task, which it dropped: nothing claimed, nothing sent
    assert expired and (report.sent, report.stop_reason) == (0, StopReason.NO_WORK)
    assert _statuses(task_id) == ["queued"] * 5
    assert task(task_id).began_at is None


def test_the_task_shows_when_sending_began(
    api: ApiClient, planner: PlannerDriver, world: World, clock: FakeClock, alice: dict[str, Any]
) -> None:
    task_id = _planned(api, planner, alice)
    assert api.get(f"/api/tasks/{task_id}", user="alice").body["began_at"] is None
    clock.advance(30)
    began = clock.now()
    assert world.tick("svc-a", budget=20.0).sent == RECIPIENTS
    assert api.get(f"/api/tasks/{task_id}", user="alice").body["began_at"] == iso(began)


def test_the_dispatcher_function_takes_the_stacks_default_from_its_settings(
    world: World, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dispatcher_handler

    from tests.integration.test_wake_ups_api import Context

    # Given a stack whose DefaultMaxLatenessSeconds is two hours, and a task three hours old
    world.service("svc-a")
    task_id = world.campaign("carol", 3, ["svc-a"])
    clock.advance(3 * HOUR)
    monkeypatch.setenv("DEFAULT_MAX_LATENESS_SECONDS", "7200")
    load_settings.cache_clear()  # settings are read once per cold start: this function starts cold
    dispatcher_handler.runtime.cache_clear()
    try:
        dispatcher_handler.runtime().clock = clock

        # When the function's schedule tick runs
        summary = dispatcher_handler.lambda_handler({"service_id": "svc-a"}, Context())
    finally:
        load_settings.cache_clear()
        dispatcher_handler.runtime.cache_clear()

    # Then the task expired instead of sending
    assert summary["sent"] == 0
    assert (task(task_id).status, task(task_id).reason) == (TaskStatus.EXPIRED, "late_start:3h00m")
