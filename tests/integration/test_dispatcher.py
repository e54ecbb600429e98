"""The dispatcher on in-process moto with an injected clock: pace, fairness, quota, control."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest

from core.clock import utc_day
from core.dispatch.control import control_changed
from core.dispatch.dispatcher import StopReason
from core.settings import Settings
from core.storage.models import ServiceUsageModel, SubtaskModel, TaskModel
from tests.conftest import FakeClock
from tests.support.dispatching import World, sent_subtasks, start_scheduler, task

TICK = 60.0


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def _next_tick(clock: FakeClock, started: float) -> float:
    clock.current = max(clock.current, started + TICK)
    return clock.current


def test_sends_are_paced_within_and_across_invocations(world: World, clock: FakeClock) -> None:
    # Given one service pacing at 2 s and 100 queued emails
    world.service("svc", sending_rate=2.0)
    task_id = world.campaign("alice", 100, ["svc"])

    # When the dispatcher runs on consecutive one-minute ticks until the task is done
    started = clock.now()
    ticks = 0
    while task(task_id).status != "completed":
        report = world.tick("svc", budget=59.0)
        ticks += 1
        assert report.stop_reason in (StopReason.BUDGET_SPENT, StopReason.NO_WORK)
        started = _next_tick(clock, started)
        assert ticks < 10

    # Then every gap between sends is at least 2 s and the mean gap at most 2.02 s
    times = [float(s.sent_at or 0) for s in sent_subtasks(task_id)]
    assert len(times) == 100 and ticks >= 4
    gaps = [b - a for a, b in pairwise(times)]
    assert min(gaps) >= 2.0
    assert sum(gaps) / len(gaps) <= 2.02


def test_round_robin_is_fair_between_users_and_tasks(world: World, clock: FakeClock) -> None:
    # Given A with two tasks of 100, B with one of 5 and C with one of 50 on one service
    world.service("svc", sending_rate=0.1)
    a1 = world.campaign("user_a", 100, ["svc"])
    a2 = world.campaign("user_a", 100, ["svc"])
    world.campaign("user_b", 5, ["svc"])
    world.campaign("user_c", 50, ["svc"])

    # When the dispatcher sends 60 emails
    world.tick("svc", budget=5.95)

    sends = sent_subtasks()
    order = [s.user_id for s in sends]
    assert len(order) == 60
    # Then the first three sends are one per user
    assert sorted(order[:3]) == ["user_a", "user_b", "user_c"]
    # B finishes within its first 5 rounds (three users per round while B has work)
    assert order[:15].count("user_b") == 5
    # Over any run of k rounds each user with work got k sends, give or take one
    for k in range(1, 16):
        window = Counter(order[: 3 * k])
        if k <= 5:
            assert all(abs(window[user] - k) <= 1 for user in ("user_a", "user_b", "user_c"))
    after_b = Counter(order[15:])
    assert abs(after_b["user_a"] - after_b["user_c"]) <= 1
    # and A's two tasks alternate
    a_tasks = [s.task_id for s in sends if s.user_id == "user_a"]
    assert all(x != y for x, y in pairwise(a_tasks))
    assert set(a_tasks) == {a1, a2}


def test_daily_quota_is_never_exceeded_and_the_rest_waits_for_the_next_day(world: World, clock: FakeClock) -> None:
    # Given a service allowed 10 emails a day and 30 queued
    world.service("svc", sending_rate=1.0, daily_quota=10)
    task_id = world.campaign("alice", 30, ["svc"])
    first_day = utc_day(clock.now())

    # When it runs several ticks on the same day
    reports = []
    for _ in range(3):
        reports.append(world.tick("svc", budget=59.0))
        clock.advance(TICK)
        if utc_day(clock.now()) != first_day:
            break

    # Then exactly 10 were sent that UTC day and the service says why it stopped
    assert len(sent_subtasks(task_id)) == 10
    assert reports[0].stop_reason is StopReason.DAILY_QUOTA
    assert ServiceUsageModel.get("svc", first_day).used == 10
    assert task(task_id).counts.queued == 20
    assert (task(task_id).status, task(task_id).reason) == ("waiting", "daily_quota_exhausted:svc")

    # When the next UTC day starts, 10 more go out
    clock.current = (clock.current // 86_400 + 1) * 86_400 + 5
    world.tick("svc", budget=59.0)
    assert len(sent_subtasks(task_id)) == 20
    assert task(task_id).reason == "daily_quota_exhausted:svc"  # exhausted again, still waiting
    assert ServiceUsageModel.get("svc", utc_day(clock.now())).used == 10


def test_completed_exactly_once_with_counts(world: World, clock: FakeClock) -> None:
    world.service("svc", sending_rate=0.5)
    task_id = world.campaign("alice", 7, ["svc"])

    report = world.tick("svc", budget=59.0)

    final = task(task_id)
    assert report.sent == 7 and final.status == "completed"
    assert (final.counts.sent, final.counts.queued) == (7, 0)
    assert final.active_partition == "done#2026-11-30"  # out of the dispatchers' partition, in stats'
    assert all(s.message_id for s in sent_subtasks(task_id))
    # A later tick finds nothing and changes nothing
    clock.advance(TICK)
    assert world.tick("svc").sent == 0
    assert task(task_id).counts.sent == 7


def test_paused_task_gets_no_further_send_after_the_current_one(world: World, clock: FakeClock) -> None:
    world.service("svc", sending_rate=2.0)
    task_id = world.campaign("alice", 10, ["svc"])

    def pause_after_first_send(point: str, subtask: SubtaskModel) -> None:
        if point == "after_send" and subtask.task_id == task_id:
            TaskModel(task_id).update(
                actions=[
                    TaskModel.status.set("paused"),
                    TaskModel.active_partition.remove(),
                    TaskModel.active_sort.remove(),
                ]
            )
            control_changed()  # as every status writer announces it (scheduler_control.pause_task)

    world.tick("svc", budget=59.0, fault=pause_after_first_send)

    assert len(sent_subtasks(task_id)) == 1
    assert task(task_id).status == "paused"


def test_stopped_scheduler_sends_nothing(world: World, clock: FakeClock) -> None:
    world.service("svc")
    world.campaign("alice", 3, ["svc"])
    from core.storage.models import SchedulerStateModel

    SchedulerStateModel("scheduler").update(actions=[SchedulerStateModel.running.set(False)])

    report = world.tick("svc")

    assert report.stop_reason is StopReason.SCHEDULER_STOPPED and report.sent == 0


def test_overlapping_invocation_exits_at_once(world: World, clock: FakeClock) -> None:
    world.service("svc", sending_rate=1.0)
    task_id = world.campaign("alice", 5, ["svc"])
    nested = []

    def overlap(point: str, subtask: SubtaskModel) -> None:
        if point == "after_claim" and not nested:
            nested.append(world.tick("svc").stop_reason)

    world.tick("svc", fault=overlap)

    assert nested == [StopReason.LEASE_BUSY]
    assert len(sent_subtasks(task_id)) == 5


def test_crash_after_ses_accepted_leaves_unknown_never_resent(world: World, clock: FakeClock) -> None:
    world.service("svc", sending_rate=1.0)
    task_id = world.campaign("alice", 5, ["svc"])
    crashed = []

    def crash_after_first_send(point: str, subtask: SubtaskModel) -> None:
        if point == "after_send" and not crashed:
            crashed.append(subtask.contact_id)
            raise RuntimeError("injected crash after SES accepted")

    with pytest.raises(RuntimeError):
        world.tick("svc", fault=crash_after_first_send)
    clock.advance(TICK)
    report = world.tick("svc")

    assert report.recovered_unknown == 1
    unknown = [s for s in SubtaskModel.scan() if s.status == "unknown"]
    assert [s.contact_id for s in unknown] == crashed
    assert len(sent_subtasks(task_id)) == 4
    final = task(task_id)
    assert (final.counts.unknown, final.counts.sent, final.status) == (1, 4, "completed")


def test_counters_left_behind_by_a_killed_flush_are_repaired_and_the_task_completes(
    world: World, clock: FakeClock
) -> None:
    # Given a task whose subtasks were all recorded but whose counters were never flushed
    world.service("svc", sending_rate=0.5)
    task_id = world.campaign("alice", 4, ["svc"])
    world.tick("svc", budget=1.2)  # sends 3, flushes them
    TaskModel(task_id).update(actions=[TaskModel.counts.queued.set(4), TaskModel.counts.sent.set(0)])
    clock.advance(TICK)

    # When later ticks find its queue drained
    world.tick("svc")
    clock.advance(TICK)
    world.tick("svc")

    # Then the counters match the subtasks and the task completes
    final = task(task_id)
    assert (final.counts.sent, final.counts.queued, final.status) == (4, 0, "completed")
