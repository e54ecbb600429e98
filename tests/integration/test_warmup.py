"""Warm-up ramps with the real dispatcher on moto and an injected clock: each UTC day's allowance is
sent exactly, the rest waits with the reason `warmup_allowance:<service>` and goes on by itself the
next day; the allowance shows in stats; what is beyond it fails over; clearing the ramp restores the
daily quota; bad ramps are refused naming the field."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from core.clock import utc_day
from core.dispatch.dispatcher import StopReason
from core.planning.routing import user_capacities, waiting_reason
from core.service_health import HealthDeps, check_service
from core.settings import Settings
from core.storage.models import EmailServiceModel, ServiceUsageModel, SubtaskModel, UserModel
from tests.conftest import ApiClient, FakeClock
from tests.integration.given import assert_rejected, given_service
from tests.integration.test_health import moto_clients
from tests.support.dispatching import World, sent_subtasks, start_scheduler, task
from tests.support.planning import seed_service

DAY = 86_400
TICK = 60.0
STANDARD_WEEK = [50, 75, 112, 168, 253, 379, 569]  # 50, then x1.5 a day, rounded down


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def _next_day(clock: FakeClock) -> None:
    clock.current = (clock.current // DAY + 1) * DAY + 5  # 00:00:05 UTC of the next day


def _used(service_id: str, now: float) -> int:
    try:
        return int(ServiceUsageModel.get(service_id, utc_day(now), consistent_read=True).used)
    except ServiceUsageModel.DoesNotExist:
        return 0


def _service_stats(api: ApiClient, service_id: str) -> dict[str, Any]:
    reply = api.get("/api/scheduler/stats")
    assert reply.status == 200, reply.body
    (found,) = [s for s in reply.body["services"] if s["service_id"] == service_id]
    return dict(found)


def test_a_standard_ramp_sends_exactly_each_days_allowance_over_a_week(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    # Given a service on the standard ramp from today, a daily quota far above it, and plenty queued
    svc = given_service(api, sending_rate=0.01, daily_quota=100_000, warmup={"preset": "standard"})
    task_id = world.campaign("alice", 1_700, [svc])
    days = []

    for day, allowance in enumerate(STANDARD_WEEK, start=1):
        days.append(utc_day(clock.now()))
        # When its dispatcher runs its one-minute ticks until it stops for the day
        reports = [world.tick(svc, budget=59.0)]
        while reports[-1].stop_reason is StopReason.BUDGET_SPENT:
            clock.advance(TICK)
            reports.append(world.tick(svc, budget=59.0))
            assert len(reports) < 5
        # Then exactly that day's allowance went out, and the service stopped on the ramp
        assert sum(report.sent for report in reports) == allowance, f"day {day}"
        assert reports[-1].stop_reason is StopReason.WARMUP_ALLOWANCE
        assert _used(svc, clock.now()) == allowance
        # and the task waits with the reason
        waiting = task(task_id)
        assert (waiting.status, waiting.reason) == ("waiting", f"warmup_allowance:{svc}")
        assert waiting.counts.sent == sum(STANDARD_WEEK[:day])
        # Stats show the ramp's day, the allowance as the effective quota, and why the service stopped
        stats = _service_stats(api, svc)
        assert stats["warmup"]["day"] == day and stats["warmup"]["allowance_today"] == allowance
        assert (stats["daily_quota"], stats["effective_daily_quota"]) == (100_000, allowance)
        assert (stats["used_today"], stats["remaining_quota"], stats["usage_percentage"]) == (allowance, 0, 100.0)
        assert stats["reason"] == f"warmup_allowance:{svc}"

        # A later tick the same day sends nothing more
        clock.advance(TICK)
        again = world.tick(svc, budget=59.0)
        assert (again.sent, again.stop_reason) == (0, StopReason.WARMUP_ALLOWANCE)
        _next_day(clock)

    # After the week: each day's allowance sent on that UTC day (by the subtasks' own send times),
    # every recipient once, the rest still queued for the days to come
    sent = sent_subtasks(task_id)
    assert Counter(utc_day(float(s.sent_at or 0)) for s in sent) == dict(zip(days, STANDARD_WEEK, strict=True))
    assert len({s.email for s in sent}) == len(sent) == sum(STANDARD_WEEK)
    assert task(task_id).counts.queued == 1_700 - sum(STANDARD_WEEK)


def test_work_beyond_the_allowance_fails_over_to_the_users_other_service(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    # Given alice's campaign split between two services, then a ramp of 10 a day put on svc-a
    world.service("svc-a", sending_rate=0.1, daily_quota=1000)
    world.service("svc-b", sending_rate=0.1, daily_quota=1000)
    task_id = world.campaign("alice", 60, ["svc-a", "svc-b"])
    on_a = sum(1 for s in SubtaskModel.scan() if s.service_id == "svc-a")
    assert on_a > 10
    reply = api.patch("/api/services/svc-a", {"warmup": {"preset": "custom", "schedule": [10, 20]}})
    assert reply.status == 200, reply.body
    assert (reply.body["daily_quota"], reply.body["remaining_quota"]) == (1000, 10)

    # When svc-a's dispatcher runs: it sends its allowance and hands the rest to svc-b
    report = world.tick("svc-a", budget=59.0)
    assert report.stop_reason is StopReason.WARMUP_ALLOWANCE
    assert (report.sent, report.failed_over) == (10, on_a - 10)
    assert _used("svc-a", clock.now()) == 10
    # Routing sees svc-a out of its allowance: it takes no new work today, and says why
    capacities = user_capacities(UserModel.get("alice"), clock.now())
    assert [(c.service_id, c.remaining_today, c.available) for c in capacities] == [
        ("svc-a", 0, False),
        ("svc-b", 1000, True),
    ]
    assert waiting_reason(capacities[:1]) == "warmup_allowance:svc-a"

    # Then svc-b sends the rest and every recipient got one email
    world.tick("svc-b", budget=59.0)
    final = task(task_id)
    assert (final.status, final.counts.sent) == ("completed", 60)
    sent = sent_subtasks(task_id)
    assert Counter(s.service_id for s in sent) == {"svc-a": 10, "svc-b": 50}
    assert len({s.email for s in sent}) == 60


def test_clearing_the_ramp_restores_the_daily_quota_the_same_day(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    # Given a service of 200 a day on the standard ramp (50 today) and 150 queued
    svc = given_service(api, sending_rate=0.01, daily_quota=200, warmup={"preset": "standard"})
    task_id = world.campaign("alice", 150, [svc])
    assert world.tick(svc).sent == 50
    assert task(task_id).reason == f"warmup_allowance:{svc}"
    (listed,) = api.get("/api/services").body["services"]
    assert (listed["daily_quota"], listed["remaining_quota"], listed["warmup"]["allowance_today"]) == (200, 0, 50)

    # When an admin clears the ramp
    reply = api.patch(f"/api/services/{svc}", {"warmup": None})

    # Then the daily quota applies again: 150 left today, and the rest of the campaign goes out
    assert reply.status == 200, reply.body
    assert (reply.body["warmup"], reply.body["daily_quota"], reply.body["remaining_quota"]) == (None, 200, 150)
    assert EmailServiceModel.get(svc).warmup is None
    clock.advance(TICK)
    report = world.tick(svc)
    assert report.sent == 100 and report.stop_reason is StopReason.NO_WORK
    assert (task(task_id).status, task(task_id).counts.sent) == ("completed", 150)
    stats = _service_stats(api, svc)
    assert (stats["warmup"], stats["effective_daily_quota"], stats["remaining_quota"]) == (None, 200, 50)
    assert stats["reason"] is None


def test_a_ramp_that_starts_later_sends_nothing_until_its_first_day(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    tomorrow = utc_day(clock.now() + DAY)
    svc = given_service(api, sending_rate=0.01, daily_quota=500, warmup={"preset": "aggressive", "start_day": tomorrow})
    task_id = world.campaign("alice", 300, [svc])
    # planned while the service has no allowance: the task waits from the start, with the reason
    assert (task(task_id).status, task(task_id).reason) == ("waiting", f"warmup_allowance:{svc}")
    report = world.tick(svc)
    assert (report.sent, report.stop_reason) == (0, StopReason.WARMUP_ALLOWANCE)
    assert _service_stats(api, svc)["warmup"]["day"] == 0

    _next_day(clock)
    assert world.tick(svc).sent == 200  # day 1 of the aggressive ramp
    _next_day(clock)
    assert world.tick(svc).sent == 100  # day 2 would allow 400: the queue runs out first
    assert task(task_id).status == "completed"


@pytest.mark.parametrize(
    ("warmup", "field"),
    [
        ({"preset": "turbo"}, "warmup.preset"),
        ({"preset": "custom"}, "warmup"),  # a custom ramp needs its schedule
        ({"preset": "standard", "schedule": [10, 20]}, "warmup"),
        ({"preset": "custom", "schedule": [10], "growth": 2}, "warmup"),
        ({"growth": 1}, "warmup.growth"),
        ({"growth": 0.9}, "warmup.growth"),
        ({"first_day": 0}, "warmup.first_day"),
        ({"preset": "custom", "schedule": []}, "warmup.schedule"),
        ({"preset": "custom", "schedule": [10, -1]}, "warmup.schedule[1]"),
        ({"preset": "custom", "schedule": [5] * 366}, "warmup.schedule"),
        ({"start_day": "tomorrow"}, "warmup.start_day"),
        ({"speed": "fast"}, "warmup.speed"),
        ("standard", "warmup"),
    ],
)
def test_bad_ramps_are_refused_naming_the_field_and_change_nothing(api: ApiClient, warmup: Any, field: str) -> None:
    body = {"name": "ses", "region": "us-east-1", "sending_rate": 0.05, "daily_quota": 1000, "warmup": warmup}
    assert_rejected(api.post("/api/services", body), field)
    assert list(EmailServiceModel.scan()) == []

    svc = given_service(api, warmup={"preset": "standard"})
    assert_rejected(api.patch(f"/api/services/{svc}", {"warmup": warmup}), field)
    assert EmailServiceModel.get(svc).warmup.as_dict()["preset"] == "standard"


def test_the_health_check_compares_todays_quota_with_what_the_account_gives(aws: Settings, clock: FakeClock) -> None:
    # moto's sandbox account gives 200 a day: a service of 1,000 warns, unless its ramp allows 50 today
    seed_service("svc-warm", clock.now(), sending_rate=1.0, daily_quota=1000)
    seed_service("svc-cold", clock.now(), sending_rate=1.0, daily_quota=1000)
    ramp = {"preset": "standard", "first_day": 50, "growth": 1.5, "start_day": utc_day(clock.now())}
    EmailServiceModel("svc-warm").update(actions=[EmailServiceModel.warmup.set(ramp)])
    deps = HealthDeps(clock=clock, clients=moto_clients())

    assert check_service("svc-warm", deps).health_warnings == []
    assert check_service("svc-cold", deps).health_warnings == ["daily_quota_above_account_max:1000>200"]
    # Day 4 of the ramp allows 168, day 5 253: above what the account gives, so it warns again
    clock.advance(4 * DAY)
    assert check_service("svc-warm", deps).health_warnings == ["daily_quota_above_account_max:253>200"]
