"""Continuous sending across invocations (core.dispatch.lease) on in-process moto with an injected
clock: hand-off to a successor at the stored pace, wake-ups that find the service busy, the
one-request control look, a lost lease, a scheduled task falling due mid-invocation."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import boto3
import pytest

from core.dispatch.dispatcher import StopReason
from core.dispatch.lease import service_state_key
from core.dispatch.wakeups import WakeQueue, WakeReason, WakeRequest
from core.settings import Settings
from core.storage.models import SchedulerStateModel, SubtaskModel, TaskModel
from tests.conftest import FakeClock
from tests.support.dispatching import World, dynamodb_requests, sent_subtasks, start_scheduler, task


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


@pytest.fixture
def wake_queue(aws: Settings) -> WakeQueue:
    return WakeQueue(boto3.client("sqs"), aws.dispatch_wake_queue_url)


def take_wake_ups(queue: WakeQueue) -> list[WakeRequest]:
    """Receives (and deletes) what is on the wake-up queue, as the dispatcher's event source would."""
    requests = []
    while True:
        reply = queue.sqs.receive_message(QueueUrl=queue.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = reply.get("Messages", [])
        if not messages:
            return requests
        for message in messages:
            requests.append(WakeRequest.model_validate(json.loads(message["Body"])))
            queue.sqs.delete_message(QueueUrl=queue.queue_url, ReceiptHandle=message["ReceiptHandle"])


def send_times(task_id: str | None = None) -> list[float]:
    return [float(subtask.sent_at) for subtask in sent_subtasks(task_id)]


def test_a_hand_off_goes_on_at_the_stored_pace_with_no_gap(
    world: World, clock: FakeClock, wake_queue: WakeQueue
) -> None:
    # Given a 2 s service with more work than one invocation's 30 s budget can send
    world.service("svc", sending_rate=2.0)
    task_id = world.campaign("alice", 40, ["svc"])

    # When each invocation runs to its budget and its successor (started by the wake-up it sent)
    # takes over
    owners = ["first"]
    reports = [world.tick("svc", budget=30.0, wake=wake_queue, owner=owners[-1])]
    while task(task_id).status != "completed":
        successors = take_wake_ups(wake_queue)
        assert len(successors) == 1, "one successor per invocation that ran out of budget"
        request = successors[0]
        assert request.reason is WakeReason.HANDOFF and request.predecessor == owners[-1]
        owners.append(f"next{len(owners)}")
        reports.append(world.tick("svc", budget=30.0, wake=wake_queue, request=request, owner=owners[-1]))
        assert len(reports) < 6

    # Then the sends never came closer than the pace and never left a gap, across invocations too
    times = send_times(task_id)
    assert len(times) == 40
    assert [round(b - a, 6) for a, b in pairwise(times)] == [2.0] * 39
    assert [report.handed_off for report in reports] == [True, True, False]
    assert reports[-1].stop_reason is StopReason.NO_WORK


def test_a_successor_waits_for_its_predecessor_and_gives_up_on_a_dead_one(world: World, clock: FakeClock) -> None:
    world.service("svc", sending_rate=1.0)
    world.campaign("alice", 5, ["svc"])
    # A predecessor that holds the lease and never lets go (killed mid-invocation)
    state = SchedulerStateModel(service_state_key("svc"))
    state.update(
        actions=[SchedulerStateModel.lease_owner.set("dead"), SchedulerStateModel.lease_until.set(clock.now() + 300)]
    )
    request = WakeRequest(service_id="svc", reason=WakeReason.HANDOFF, predecessor="dead", handoff_at=clock.now() + 10)

    started = clock.now()
    report = world.tick("svc", budget=200.0, request=request)

    # It slept until just before the hand-off time, polled through the grace period, then gave up
    assert report.stop_reason is StopReason.LEASE_BUSY and report.sent == 0
    assert clock.now() - started == pytest.approx(10 + 30, abs=0.5)
    assert clock.slept[0] == pytest.approx(9.0)
    # The watchdog tick takes over once the dead holder's lease has expired
    clock.current = started + 301
    assert world.tick("svc").sent == 5


def test_a_successor_that_finds_another_holder_leaves_it_alone(world: World, clock: FakeClock) -> None:
    world.service("svc", sending_rate=1.0)
    world.campaign("alice", 5, ["svc"])
    state = SchedulerStateModel(service_state_key("svc"))
    state.update(
        actions=[
            SchedulerStateModel.lease_owner.set("watchdog"),
            SchedulerStateModel.lease_until.set(clock.now() + 300),
        ]
    )
    request = WakeRequest(service_id="svc", reason=WakeReason.HANDOFF, predecessor="gone", handoff_at=clock.now())

    report = world.tick("svc", budget=60.0, request=request)

    assert report.stop_reason is StopReason.LEASE_BUSY
    assert clock.slept == [], "a successor whose predecessor is no longer the holder does not wait"


def test_a_wake_up_for_a_busy_service_is_a_no_op_that_keeps_the_holder_looking(
    world: World, clock: FakeClock, wake_queue: WakeQueue
) -> None:
    # Given a holder about to stop because its only task is done
    world.service("svc", sending_rate=1.0)
    first = world.campaign("alice", 3, ["svc"])
    second: list[str] = []
    nested: list[Any] = []

    def new_task_and_wake_up(point: str, subtask: SubtaskModel) -> None:
        # When, after the holder's last look, a task becomes queued and its wake-up finds the lease held
        if point == "after_record" and subtask.task_id == first and not second:
            second.append(world.campaign("bob", 2, ["svc"]))
            nested.append(world.tick("svc", request=WakeRequest(service_id="svc", reason=WakeReason.QUEUED)))

    report = world.tick("svc", budget=59.0, fault=new_task_and_wake_up)

    # Then the wake-up did nothing itself, and the holder looked again instead of stopping
    assert nested[0].stop_reason is StopReason.LEASE_BUSY and nested[0].sent == 0
    assert report.sent == 5 and report.stop_reason is StopReason.NO_WORK
    assert task(second[0]).status == "completed"
    state = SchedulerStateModel.get(service_state_key("svc"), consistent_read=True)
    assert int(state.wake_seq) == 1 and float(state.lease_until) == 0


def test_control_is_looked_at_every_second_with_one_request(world: World, clock: FakeClock) -> None:
    # Given a 1/s service with 40 emails of one task (nothing changes while it sends)
    world.service("svc", sending_rate=1.0)
    task_id = world.campaign("alice", 40, ["svc"])

    with dynamodb_requests() as counts:
        report = world.tick("svc", budget=59.0)

    # Then each second's look is the claim itself: one TransactWriteItems that claims the second's
    # email, journals it under the lease and checks the scheduler's controls; no separate read
    assert report.sent == 40 and task(task_id).status == "completed"
    assert 38 <= counts["TransactWriteItems"] <= 42, counts
    # templates, senders, users' weights (once); a look only at the periodic reloads
    assert counts["BatchGetItem"] <= 6, counts
    assert counts["GetItem"] <= 4, counts  # lease, service (start and each reload): not per second
    assert counts["Query"] <= 7, counts  # active tasks (each reload), the task's queue
    # Everything else is per invocation or per batch of records, never per second
    assert sum(counts.values()) - counts["TransactWriteItems"] <= 25, counts
    assert sum(counts.values()) / report.sent <= 1.6, counts


def test_a_holder_that_lost_its_lease_stops_within_a_second(world: World, clock: FakeClock) -> None:
    world.service("svc", sending_rate=1.0)
    task_id = world.campaign("alice", 20, ["svc"])

    def stolen_after_five(point: str, subtask: SubtaskModel) -> None:
        if point == "after_send" and len(sent_subtasks(task_id)) == 0 and clock.now() >= 1_796_000_004:
            SchedulerStateModel(service_state_key("svc")).update(
                actions=[SchedulerStateModel.lease_owner.set("usurper")]
            )

    report = world.tick("svc", budget=59.0, fault=stolen_after_five)

    assert report.stop_reason is StopReason.LEASE_LOST
    assert 5 <= report.sent <= 7
    # It did not release the usurper's lease
    assert SchedulerStateModel.get(service_state_key("svc"), consistent_read=True).lease_owner == "usurper"


def test_a_scheduled_task_falling_due_mid_invocation_starts_on_time(world: World, clock: FakeClock) -> None:
    world.service("svc", sending_rate=1.0)
    world.campaign("alice", 30, ["svc"])
    later = world.campaign("bob", 3, ["svc"])
    due = clock.now() + 10.5
    TaskModel(later).update(actions=[TaskModel.scheduled_at.set(due), TaskModel.status.set("scheduled")])

    world.tick("svc", budget=59.0)

    first_of_later = send_times(later)[0]
    assert due <= first_of_later <= due + 2.0  # its share starts at the first look after it fell due
