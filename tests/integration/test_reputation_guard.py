"""The reputation guard on the embedded AWS: counters per tenant and service and hour, the window, the
hold written once with its tasks paused and its metric, the admin's resume that restarts the window,
and what a held tenant may not do (core.deliverability, core.api.reputation)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.deliverability.holds import hold_user
from core.deliverability.reputation import Outcome, ReputationPolicy, guard, read_window, record
from core.settings import Settings
from core.storage.models import ReputationModel, TaskModel, UserModel
from tests.conftest import ApiClient, FakeClock
from tests.support.dispatching import World, dynamodb_requests, start_scheduler, task

HOUR = 3_600
POLICY = ReputationPolicy()  # 4 % bounces, 0.08 % complaints, at least 200 sends, 24 h


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def outcomes(user_id: str, service_id: str, kind: str, count: int, at: float) -> list[Outcome]:
    return [Outcome(user_id, service_id, kind, at) for _ in range(count)]


def sends(clock: FakeClock, user_id: str, count: int, *, bounced: int = 0, complained: int = 0) -> None:
    """What SES would report for `count` emails of `user_id` on svc-a, some bounced or complained."""
    now = clock.now()
    record(
        outcomes(user_id, "svc-a", "sent", count, now)
        + outcomes(user_id, "svc-a", "bounced", bounced, now)
        + outcomes(user_id, "svc-a", "complained", complained, now),
        now,
    )


def emf_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


def test_the_functions_get_the_default_policy_from_the_template(aws: Settings) -> None:
    assert ReputationPolicy.from_settings(aws) == POLICY


# ---------------------------------------------------------------- counters


def test_a_batch_becomes_one_update_per_scope_and_hour(aws: Settings, clock: FakeClock) -> None:
    now = clock.now()
    batch = (
        outcomes("alice", "svc-a", "sent", 30, now)
        + outcomes("alice", "svc-a", "bounced", 2, now)
        + outcomes("bob", "svc-a", "sent", 10, now)
        + outcomes("bob", "svc-a", "complained", 1, now - HOUR)
        + outcomes("alice", "svc-a", "delivered", 5, now - HOUR)
    )
    with dynamodb_requests() as made:
        record(batch, now)
    # user#alice, user#bob and service#svc-a, each in two hours
    assert made == {"UpdateItem": 6}
    items = {(item.scope, item.bucket): item for item in ReputationModel.scan()}
    hour, earlier = "2026-11-30T00", "2026-11-29T23"
    alice = items[("user#alice", hour)]
    assert (alice.sent, alice.bounced, alice.complained) == (30, 2, None)
    assert items[("user#alice", earlier)].delivered == 5
    assert items[("user#bob", earlier)].complained == 1
    service = items[("service#svc-a", hour)]
    assert (service.sent, service.bounced) == (40, 2)
    assert service.expires_at > now + 7 * 86_400  # kept longer than the longest window


def test_counters_only_add_so_batches_from_concurrent_functions_sum(aws: Settings, clock: FakeClock) -> None:
    for _ in range(3):
        sends(clock, "alice", 70, bounced=1)
    assert read_window("user#alice", clock.now(), POLICY).sent == 210
    assert read_window("service#svc-a", clock.now(), POLICY).bounced == 3


def test_an_unknown_kind_is_refused_before_anything_is_written(aws: Settings, clock: FakeClock) -> None:
    batch = [Outcome("alice", "svc-a", "sent", clock.now()), Outcome("alice", "svc-a", "opened", clock.now())]
    with pytest.raises(ValueError, match="opened"):
        record(batch, clock.now())
    assert ReputationModel.count() == 0


def test_the_window_is_the_last_24_hours(aws: Settings, clock: FakeClock) -> None:
    sends(clock, "alice", 200, bounced=20)
    clock.advance(23 * HOUR)
    sends(clock, "alice", 100)
    assert read_window("user#alice", clock.now(), POLICY) == read_window("user#alice", clock.now(), POLICY)
    window = read_window("user#alice", clock.now(), POLICY)
    assert (window.sent, window.bounced) == (300, 20)
    clock.advance(HOUR)  # the first hour has left the window
    window = read_window("user#alice", clock.now(), POLICY)
    assert (window.sent, window.bounced) == (100, 0)


def test_a_window_of_the_last_n_sends_takes_the_most_recent_hours_holding_them(aws: Settings, clock: FakeClock) -> None:
    sends(clock, "alice", 300, bounced=30)  # 10 %, three hours ago
    clock.advance(3 * HOUR)
    sends(clock, "alice", 150, bounced=0)
    clock.advance(HOUR)
    sends(clock, "alice", 100, bounced=2)
    by_sends = ReputationPolicy(window_sends=200)
    window = read_window("user#alice", clock.now(), by_sends)
    assert (window.sent, window.bounced) == (250, 2)  # whole hours: 100 + 150 reach 200
    assert by_sends.breach(window) is None  # 0.8 %
    everything = read_window("user#alice", clock.now(), POLICY)  # the 24 h window holds all of it
    assert POLICY.breach(everything) == "bounce_rate:5.82%_of_550_sends"


# ---------------------------------------------------------------- thresholds


def test_below_200_sends_nothing_trips(world: World, clock: FakeClock) -> None:
    world.campaign("alice", 5, ["svc-a"])
    sends(clock, "alice", 199, bounced=100, complained=50)
    assert guard(["alice"], ["svc-a"], clock.now(), POLICY) == []
    assert UserModel.get("alice").sending_hold is None


def test_exactly_at_the_bounce_threshold_the_tenant_is_held_and_its_open_tasks_paused(
    world: World, clock: FakeClock
) -> None:
    world.service("svc-a")
    first = world.campaign("alice", 5, ["svc-a"])
    second = world.campaign("alice", 5, ["svc-a"])
    theirs = world.campaign("bob", 5, ["svc-a"])
    sends(clock, "alice", 200, bounced=7)
    sends(clock, "bob", 1000)  # the service's rate stays low: 7 of 1200
    assert guard(["alice"], ["svc-a"], clock.now(), POLICY) == []  # 3.5 %

    sends(clock, "alice", 0, bounced=1)  # 8 of 200: exactly 4 %
    (hold,) = guard(["alice", "bob"], ["svc-a"], clock.now(), POLICY)
    assert (hold.scope, hold.scope_id, hold.reason, hold.paused_tasks) == (
        "user",
        "alice",
        "bounce_rate:4%_of_200_sends",
        2,
    )
    user = UserModel.get("alice")
    assert (user.sending_hold, user.sending_hold_at) == ("bounce_rate:4%_of_200_sends", clock.now())
    for task_id in (first, second):
        paused = task(task_id)
        assert (paused.status, paused.reason, paused.active_partition) == ("paused", "reputation_hold", "held")
    assert task(theirs).status == "queued"
    # Held once: a second guard over the same counters writes nothing and pauses nothing.
    assert guard(["alice"], ["svc-a"], clock.now(), POLICY) == []


def test_the_complaint_threshold_holds_too(world: World, clock: FakeClock) -> None:
    world.service("svc-a")
    world.campaign("alice", 5, ["svc-a"])
    sends(clock, "alice", 2500, complained=1)
    sends(clock, "bob", 10_000)
    assert guard(["alice"], ["svc-a"], clock.now(), POLICY) == []  # 0.04 %
    sends(clock, "alice", 0, complained=1)
    (hold,) = guard(["alice"], ["svc-a"], clock.now(), POLICY)
    assert hold.reason == "complaint_rate:0.08%_of_2500_sends"


def test_a_hold_publishes_a_metric_by_scope(world: World, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    world.service("svc-a")
    world.campaign("alice", 5, ["svc-a"])
    sends(clock, "alice", 200, bounced=20)
    capsys.readouterr()
    holds = guard(["alice"], ["svc-a"], clock.now(), POLICY)
    assert sorted(hold.scope for hold in holds) == ["service", "user"]
    documents = [doc for doc in emf_lines(capsys.readouterr().out) if "ReputationHold" in doc]
    assert sorted(doc["Scope"] for doc in documents) == ["service", "user"]
    for doc in documents:
        assert doc["ReputationHold"] == [1.0]
        assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Scope"]]
    capsys.readouterr()
    assert guard(["alice"], ["svc-a"], clock.now(), POLICY) == []
    assert not [doc for doc in emf_lines(capsys.readouterr().out) if "ReputationHold" in doc]


# ---------------------------------------------------------------- what a held tenant may not do


def test_a_task_planned_while_the_tenant_is_held_ends_paused(world: World, clock: FakeClock) -> None:
    world.service("svc-a")
    world.campaign("alice", 5, ["svc-a"])
    sends(clock, "alice", 200, bounced=10)
    guard(["alice"], [], clock.now(), POLICY)

    later = world.campaign("alice", 5, ["svc-a"])
    planned = task(later)
    assert (planned.status, planned.reason, planned.active_partition) == ("paused", "reputation_hold", "held")
    assert (planned.counts.queued, planned.counts.total) == (5, 5)


def test_a_hold_written_while_the_planner_finishes_still_pauses_the_task(world: World, clock: FakeClock) -> None:
    """The planner read "not held", the guard swept the tenant's tasks before this one left planning:
    the planner's look after its move catches it."""
    world.service("svc-a")
    world.campaign("alice", 5, ["svc-a"])
    sends(clock, "alice", 200, bounced=10)
    from core.deliverability import holds
    from core.planning import planner

    real = planner.user_hold
    calls: list[str] = []

    def held_meanwhile(user_id: str) -> str | None:
        reason = real(user_id)
        if not calls:  # the finish's first look: the guard holds the tenant just after it
            guard([user_id], [], clock.now(), POLICY)
        calls.append(user_id)
        return reason

    planner.user_hold = held_meanwhile  # type: ignore[assignment]
    try:
        racing = world.campaign("alice", 5, ["svc-a"])
    finally:
        planner.user_hold = real  # type: ignore[assignment]
    assert holds.user_hold("alice") is not None
    final = task(racing)
    assert (final.status, final.reason, final.active_partition) == ("paused", "reputation_hold", "held")


def test_the_tenant_cannot_resume_a_held_task_nor_retry_its_failures(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    world.service("svc-a")
    task_id = world.campaign("alice", 5, ["svc-a"])
    sends(clock, "alice", 200, bounced=10)
    guard(["alice"], [], clock.now(), POLICY)

    for path in (f"/api/scheduler/tasks/{task_id}/resume", f"/api/tasks/{task_id}/retry-failed"):
        for caller in ("alice", "admin"):
            reply = api.post(path, user=caller)
            assert (reply.status, reply.body["error"]) == (409, "reputation_hold"), (path, caller)
            assert "bounce_rate:5%_of_200_sends" in reply.body["message"]
    assert task(task_id).status == "paused"


# ---------------------------------------------------------------- admin resume


def test_a_hold_written_while_the_tenant_resumes_its_task_pauses_it_again(
    world: World, api: ApiClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.service("svc-a")
    task_id = world.campaign("alice", 5, ["svc-a"])
    assert api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice").status == 200
    sends(clock, "alice", 200, bounced=10)
    from core.api import scheduler_control

    real = scheduler_control.require_not_held

    def held_just_after_the_check(user_id: str) -> None:
        real(user_id)  # not held yet...
        guard([user_id], [], clock.now(), POLICY)  # ...and held before the task moves

    monkeypatch.setattr(scheduler_control, "require_not_held", held_just_after_the_check)
    reply = api.post(f"/api/scheduler/tasks/{task_id}/resume", user="alice")
    assert (reply.status, reply.body["error"]) == (409, "reputation_hold")
    final = task(task_id)
    assert (final.status, final.reason, final.active_partition) == ("paused", "reputation_hold", "held")


def test_resume_sending_is_for_admins_of_known_held_users(world: World, api: ApiClient, clock: FakeClock) -> None:
    world.service("svc-a")
    world.campaign("alice", 5, ["svc-a"])
    world.campaign("bob", 5, ["svc-a"])
    sends(clock, "alice", 200, bounced=10)
    guard(["alice"], [], clock.now(), POLICY)

    assert api.post("/api/users/alice/resume-sending", user="alice").status == 403
    assert api.post("/api/users/nobody/resume-sending").status == 404
    assert api.post("/api/users/" + "x" * 300 + "/resume-sending").status == 404
    reply = api.post("/api/users/bob/resume-sending")
    assert (reply.status, reply.body["error"]) == (409, "not_held")
    assert UserModel.get("alice").sending_hold is not None
    assert api.post("/api/services/svc-a/resume-sending", user="alice").status == 403
    assert api.post("/api/services/svc-nope/resume-sending").status == 404
    assert api.post("/api/services/svc-a/resume-sending").status == 409


def test_admin_resume_restarts_the_window_and_resumes_what_the_hold_paused(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    world.service("svc-a")
    held = world.campaign("alice", 5, ["svc-a"])
    own = world.campaign("alice", 5, ["svc-a"])
    api.post(f"/api/scheduler/tasks/{own}/pause", user="alice")  # paused by its owner, not by the hold
    sends(clock, "alice", 200, bounced=10)
    guard(["alice"], [], clock.now(), POLICY)

    clock.advance(60)
    reply = api.post("/api/users/alice/resume-sending")
    assert reply.status == 200
    assert reply.body == {
        "user_id": "alice",
        "cleared_hold": "bounce_rate:5%_of_200_sends",
        "resumed_task_ids": [held],
        "window_buckets_reset": 1,
    }
    assert UserModel.get("alice").sending_hold is None
    resumed = task(held)
    assert (resumed.status, resumed.reason, resumed.active_partition) == ("queued", None, "active")
    assert task(own).status == "paused"  # the owner's own pause stays
    assert api.post(f"/api/scheduler/tasks/{own}/resume", user="alice").status == 200  # no longer held

    # The old bounces no longer count: the same counters trip nothing.
    assert guard(["alice"], [], clock.now(), POLICY) == []
    window = read_window("user#alice", clock.now(), POLICY)
    assert (window.sent, window.bounced) == (0, 0)
    # Only what comes after the resume counts: 200 clean sends, then 8 bounces trip it again.
    sends(clock, "alice", 200, bounced=7)
    assert guard(["alice"], [], clock.now(), POLICY) == []
    sends(clock, "alice", 0, bounced=1)
    assert [hold.reason for hold in guard(["alice"], [], clock.now(), POLICY)] == ["bounce_rate:4%_of_200_sends"]


def test_a_guard_that_read_the_window_before_a_resume_cannot_hold_again_with_it(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    world.service("svc-a")
    world.campaign("alice", 5, ["svc-a"])
    sends(clock, "alice", 200, bounced=10)
    guard(["alice"], [], clock.now(), POLICY)
    stale = read_window("user#alice", clock.now(), POLICY)  # a guard reads the old counts...
    assert api.post("/api/users/alice/resume-sending").status == 200  # ...an admin resumes...
    assert hold_user("alice", "bounce_rate:5%_of_200_sends", clock.now(), resets_seen=stale.resets) is None
    assert UserModel.get("alice").sending_hold is None  # ...and its late write is refused


def test_a_resume_that_stopped_half_way_is_finished_by_calling_it_again(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    world.service("svc-a")
    task_id = world.campaign("alice", 5, ["svc-a"])
    sends(clock, "alice", 200, bounced=10)
    guard(["alice"], [], clock.now(), POLICY)
    # the hold was cleared, then the function died before moving the tasks
    UserModel("alice").update(actions=[UserModel.sending_hold.remove()])

    reply = api.post("/api/users/alice/resume-sending")
    assert (reply.status, reply.body["cleared_hold"], reply.body["resumed_task_ids"]) == (200, None, [task_id])
    assert TaskModel.get(task_id).status == "queued"
    assert api.post("/api/users/alice/resume-sending").status == 409
