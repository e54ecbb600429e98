"""Claims in bulk (core.dispatch.claims.claim_subtasks): about one second of pace claimed in one
TransactWriteItems (which is also the look at the controls); a subtask moved meanwhile is left out;
claimed emails of a task paused, cancelled or stopped before their turn go back (or are cancelled
and refunded), nothing is left `sending`, and the quota units come back."""

from __future__ import annotations

from collections import Counter

import pytest

from core.clock import utc_day
from core.dispatch.control import control_changed
from core.dispatch.dispatcher import StopReason
from core.dispatch.schedules import SCHEDULER_STATE_KEY
from core.settings import Settings
from core.states import SubtaskStatus
from core.storage.models import SchedulerStateModel, ServiceUsageModel, SubtaskModel, TaskModel, UserModel
from tests.conftest import FakeClock
from tests.support.dispatching import World, dynamodb_requests, sent_subtasks, start_scheduler, task


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def statuses(task_id: str) -> Counter[str]:
    return Counter(s.status for s in SubtaskModel.scan() if s.task_id == task_id)


def used_today(service_id: str, clock: FakeClock) -> int:
    try:
        return int(ServiceUsageModel.get(service_id, utc_day(clock.now()), consistent_read=True).used)
    except ServiceUsageModel.DoesNotExist:
        return 0


@pytest.mark.parametrize(
    ("interval", "emails", "per_claim"),
    [(1.0, 200, 1), (0.1, 100, 10), (0.001, 100, 25)],
)
def test_claims_cover_about_one_second_of_pace_in_one_request(
    world: World, clock: FakeClock, interval: float, emails: int, per_claim: int
) -> None:
    world.service("svc", sending_rate=interval)
    task_id = world.campaign("alice", emails, ["svc"])

    with dynamodb_requests() as counts:
        report = world.tick("svc", budget=200.0)

    assert report.sent == emails and task(task_id).status == "completed"
    assert counts["TransactWriteItems"] == pytest.approx(emails / per_claim, abs=1)
    if interval >= 1.0:  # a slow service: the look each second and the claims, not the invocation's own
        assert sum(counts.values()) / emails <= 2.0, counts


def test_a_subtask_moved_between_pick_and_claim_is_left_out_and_its_quota_unit_returned(
    world: World, clock: FakeClock
) -> None:
    world.service("svc", sending_rate=0.1)
    task_id = world.campaign("alice", 10, ["svc"])
    moved: list[str] = []

    def unsubscribe_one(point: str, subtask: SubtaskModel) -> None:
        if point == "before_claim" and not moved:
            moved.append(subtask.contact_id)
            SubtaskModel(subtask.partition, subtask.contact_id).update(
                actions=[SubtaskModel.status.set(SubtaskStatus.SUPPRESSED), SubtaskModel.queue_key.remove()]
            )

    report = world.tick("svc", budget=59.0, fault=unsubscribe_one)

    assert report.sent == 9
    assert statuses(task_id) == Counter({"sent": 9, "suppressed": 1})
    assert moved[0] not in {s.contact_id for s in sent_subtasks(task_id)}
    assert used_today("svc", clock) == 9  # the left-out pick's unit went back


def test_claimed_emails_of_a_task_paused_meanwhile_go_back_to_the_queue(world: World, clock: FakeClock) -> None:
    world.service("svc", sending_rate=0.1)  # 20 claimed at a time
    task_id = world.campaign("alice", 60, ["svc"])

    def pause_after_first_send(point: str, subtask: SubtaskModel) -> None:
        if point == "after_send" and len(sent_subtasks(task_id)) == 0 and task(task_id).status != "paused":
            TaskModel(task_id).update(
                actions=[
                    TaskModel.status.set("paused"),
                    TaskModel.active_partition.remove(),
                    TaskModel.active_sort.remove(),
                ]
            )
            control_changed()

    report = world.tick("svc", budget=59.0, fault=pause_after_first_send)

    # The pause took effect at the next look (within a second of sending: at most 10 at 10/s)
    assert 1 <= report.sent <= 11
    counts = statuses(task_id)
    assert counts == Counter({"sent": report.sent, "queued": 60 - report.sent}), counts
    assert used_today("svc", clock) == report.sent


def test_claimed_emails_of_a_task_cancelled_meanwhile_are_cancelled_and_refunded(
    world: World, clock: FakeClock
) -> None:
    world.service("svc", sending_rate=0.1)
    task_id = world.campaign("alice", 30, ["svc"], quota=100)
    cancelled: list[bool] = []

    def cancel_after_first_send(point: str, subtask: SubtaskModel) -> None:
        if point == "after_send" and not cancelled:
            cancelled.append(True)
            TaskModel(task_id).update(
                actions=[
                    TaskModel.status.set("cancelled"),
                    TaskModel.active_partition.remove(),
                    TaskModel.active_sort.remove(),
                ]
            )
            control_changed()
            clock.sleep(1.0)  # a slow SES reply: the next look comes while claimed emails are unsent

    report = world.tick("svc", budget=59.0, fault=cancel_after_first_send)

    counts = statuses(task_id)
    # The claimed ones are cancelled by the dispatcher; the rest stay queued for the task's sweep
    assert counts["sent"] == report.sent and counts["sending"] == 0
    stored = task(task_id)
    assert int(stored.counts.cancelled) == counts["cancelled"] > 0
    assert int(stored.quota_refunded) == counts["cancelled"]
    assert int(UserModel.get("alice").remaining_quota) == 100 - 30 + counts["cancelled"]


def test_a_stop_releases_claims_and_the_next_run_sends_them_once(world: World, clock: FakeClock) -> None:
    world.service("svc", sending_rate=0.1)
    task_id = world.campaign("alice", 40, ["svc"])

    def stop_after_third(point: str, subtask: SubtaskModel) -> None:
        if point == "after_send" and clock.now() >= 1_796_000_000.2:
            SchedulerStateModel(SCHEDULER_STATE_KEY).update(actions=[SchedulerStateModel.running.set(False)])

    first = world.tick("svc", budget=59.0, fault=stop_after_third)
    assert first.stop_reason is StopReason.SCHEDULER_STOPPED
    assert statuses(task_id)["sending"] == 0
    assert used_today("svc", clock) == first.sent

    start_scheduler(clock.now())
    second = world.tick("svc", budget=59.0)

    assert first.sent + second.sent == 40
    assert len({s.contact_id for s in sent_subtasks(task_id)}) == 40
    assert task(task_id).status == "completed"
    assert used_today("svc", clock) == 40
