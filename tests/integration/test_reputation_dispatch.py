"""The reputation guard against real sending (dispatchers in-process on the embedded AWS): a tenant
held mid-campaign stops before the next sends while the others on its service go on, a held service
hands its work over or makes it wait, and an admin's resume starts sending again."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from core.deliverability.reputation import Outcome, ReputationPolicy, guard, record
from core.dispatch.dispatcher import StopReason
from core.settings import Settings
from core.storage.models import EmailServiceModel, SubtaskModel, UserModel
from tests.conftest import ApiClient, FakeClock
from tests.support.dispatching import World, sent_subtasks, start_scheduler, task

# Fewer sends than the default 200 keep these tests quick; the thresholds are the defaults.
POLICY = ReputationPolicy(min_sends=10)


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def report_sends(subtasks: list[SubtaskModel], now: float) -> None:
    """What SES's Send events say about these emails (each at its send time)."""
    record([Outcome(s.user_id, s.service_id, "sent", float(s.sent_at)) for s in subtasks], now)


def report_bounces(subtasks: list[SubtaskModel], now: float) -> None:
    record([Outcome(s.user_id, s.service_id, "bounced", now) for s in subtasks], now)


def test_a_tenant_crossing_the_bounce_threshold_mid_campaign_is_paused_before_the_next_tick(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    world.service("svc-a", sending_rate=1.0)
    alice = world.campaign("alice", 60, ["svc-a"])
    bob = world.campaign("bob", 60, ["svc-a"])

    first = world.tick("svc-a", budget=30.0)
    sent = sent_subtasks()
    assert first.sent == len(sent) >= 28
    alices = [s for s in sent if s.user_id == "alice"]
    assert len(alices) >= POLICY.min_sends
    # SES reports every send, and bounces for just enough of alice's emails: the service stays under.
    report_sends(sent, clock.now())
    report_bounces(alices[: math.ceil(0.04 * len(alices))], clock.now())

    (hold,) = guard(["alice", "bob"], ["svc-a"], clock.now(), POLICY)
    assert (hold.scope, hold.scope_id, hold.paused_tasks) == ("user", "alice", 1)
    held_at = clock.now()

    clock.advance(60)
    second = world.tick("svc-a", budget=30.0)
    after = [s for s in sent_subtasks() if float(s.sent_at) > held_at]
    assert second.sent == len(after) >= 28
    assert Counter(s.user_id for s in after) == {"bob": len(after)}  # bob keeps sending, alice none
    assert (task(alice).status, task(alice).reason) == ("paused", "reputation_hold")
    assert task(alice).counts.sent == len(alices)
    assert EmailServiceModel.get("svc-a").sending_hold is None

    # The reason shows in stats, to alice and to the admin.
    for caller in ("alice", "admin"):
        stats = api.get("/api/scheduler/stats", user=caller).body
        (mine,) = [t for t in stats["tasks"] if t["task_id"] == alice]
        assert (mine["status"], mine["reason"], mine["estimated_finish"]) == ("paused", "reputation_hold", None)
        (held,) = stats["held_users"]
        assert (held["user_id"], held["reason"]) == ("alice", hold.reason)
    assert api.get("/api/scheduler/stats", user="bob").body["held_users"] == []

    # An admin resumes alice: the window starts afresh and her campaign sends again.
    assert api.post("/api/users/alice/resume-sending").status == 200
    assert guard(["alice"], ["svc-a"], clock.now(), POLICY) == []
    clock.advance(60)
    world.tick("svc-a", budget=200.0)
    assert (task(alice).status, task(alice).counts.sent) == ("completed", 60)
    assert (task(bob).status, task(bob).counts.sent) == ("completed", 60)


def test_a_hold_written_while_a_tick_sends_stops_the_tenant_before_its_next_send(
    world: World, clock: FakeClock
) -> None:
    world.service("svc-a", sending_rate=1.0)
    world.campaign("alice", 40, ["svc-a"])
    world.campaign("bob", 40, ["svc-a"])
    report_sends_at = clock.now()
    record([Outcome("alice", "svc-a", "sent", report_sends_at) for _ in range(20)], report_sends_at)
    held_at: list[float] = []

    def bounce_reports_arrive(point: str, subtask: SubtaskModel) -> None:
        # The SES events function, while this tick sends: alice's bounces cross the threshold.
        if point == "after_send" and not held_at and subtask.user_id == "alice":
            record([Outcome("alice", "svc-a", "bounced", clock.now())], clock.now())
            assert [hold.scope_id for hold in guard(["alice"], [], clock.now(), POLICY)] == ["alice"]
            held_at.append(clock.now())

    report = world.tick("svc-a", budget=40.0, fault=bounce_reports_arrive)
    assert held_at and report.sent >= 38
    later = [s for s in sent_subtasks() if float(s.sent_at) > held_at[0]]
    assert len(later) >= 30 and {s.user_id for s in later} == {"bob"}
    # alice's claimed but unsent emails went back to her queue, not sent, not lost
    alice = [s for s in SubtaskModel.scan() if s.user_id == "alice"]
    assert Counter(s.status for s in alice) == {"sent": 1, "queued": 39}


def test_a_held_service_hands_its_queued_work_to_the_tenants_other_service(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    world.service("svc-a", sending_rate=1.0)
    world.service("svc-b", sending_rate=1.0)
    task_id = world.campaign("alice", 30, ["svc-a", "svc-b"])
    on_a = [s for s in SubtaskModel.scan() if s.service_id == "svc-a"]
    assert on_a
    # svc-a's own sends bounce (its configuration, say), alice's overall rate stays under.
    now = clock.now()
    record([Outcome("alice", "svc-a", "sent", now)] * 20 + [Outcome("alice", "svc-a", "bounced", now)], now)
    record([Outcome("alice", "svc-b", "sent", now)] * 80, now)
    (hold,) = guard(["alice"], ["svc-a", "svc-b"], now, POLICY)
    assert (hold.scope, hold.scope_id, hold.reason) == ("service", "svc-a", "bounce_rate:5%_of_20_sends")

    report = world.tick("svc-a", budget=30.0)
    assert (report.stop_reason, report.sent, report.failed_over) == (StopReason.REPUTATION_HOLD, 0, len(on_a))
    assert not [s for s in SubtaskModel.scan() if s.service_id == "svc-a" and s.status == "queued"]
    stats = api.get("/api/scheduler/stats").body
    service = {s["service_id"]: s for s in stats["services"]}["svc-a"]
    assert (service["sending_hold"], service["reason"]) == (hold.reason, f"reputation_hold:{hold.reason}")
    assert api.get("/api/scheduler/status").body["active_services"] == 1

    world.tick("svc-b", budget=60.0)
    assert (task(task_id).status, task(task_id).counts.sent) == ("completed", 30)
    assert UserModel.get("alice").sending_hold is None


def test_with_no_other_service_the_work_of_a_held_service_waits_until_an_admin_resumes_it(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    world.service("svc-a", sending_rate=1.0)
    task_id = world.campaign("alice", 5, ["svc-a"])
    now = clock.now()
    record([Outcome("bob", "svc-a", "sent", now)] * 300 + [Outcome("bob", "svc-a", "complained", now)], now)
    (hold,) = guard([], ["svc-a"], now, POLICY)
    assert hold.reason == "complaint_rate:0.33%_of_300_sends"

    assert world.tick("svc-a", budget=30.0).stop_reason is StopReason.REPUTATION_HOLD
    assert (task(task_id).status, task(task_id).reason) == ("waiting", "reputation_hold:svc-a")
    # A task planned now waits for the same reason.
    later = world.campaign("alice", 3, ["svc-a"])
    assert (task(later).status, task(later).reason) == ("waiting", "reputation_hold:svc-a")

    reply = api.post("/api/services/svc-a/resume-sending")
    assert reply.status == 200
    assert reply.body == {"service_id": "svc-a", "cleared_hold": hold.reason, "window_buckets_reset": 1}
    assert guard([], ["svc-a"], clock.now(), POLICY) == []  # the old complaint no longer counts
    assert world.tick("svc-a", budget=30.0).sent == 8
    assert [task(t).status for t in (task_id, later)] == ["completed", "completed"]
