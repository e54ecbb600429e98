"""Task status moves and quota refunds on DynamoDB (moto): a refused move writes nothing, the sparse
`active` index follows the status, dispatchers hear of announced moves, and a refund moves the
task's and the user's counters together or not at all (core.task_transitions, core.refunds)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from core.dispatch.schedules import SCHEDULER_STATE_KEY
from core.refunds import refund_in, refund_quota
from core.settings import Settings
from core.states import TaskStatus
from core.storage.models import TASK_COUNTS, SchedulerStateModel, TaskModel, UserModel, transaction_connection
from core.task_transitions import TaskMoveRefused, complete_if_done, move_task, move_task_in, task_move
from tests.conftest import FakeClock


def given_user(remaining: int = 10) -> None:
    UserModel("alice", email="alice@example.com", quota=10, remaining_quota=remaining, created_at=0).save()


def given_task(status: TaskStatus, *, queued: int = 3, active: bool = False) -> TaskModel:
    task = TaskModel(
        "task_1",
        user_id="alice",
        name="spring",
        sender_id="snd_1",
        template_ids=["tpl_1"],
        status=status,
        quota_reserved=5,
        created_at=1.0,
        updated_at=1.0,
    )
    task.counts.queued = queued
    if active:
        task.active_partition, task.active_sort = "active", "alice#task_1"
    task.save()
    return task


def raw_item(table: str, key: dict[str, Any]) -> dict[str, Any]:
    return dict(boto3.client("dynamodb").get_item(TableName=table, Key=key, ConsistentRead=True)["Item"])


def stored_task(settings: Settings) -> dict[str, Any]:
    return raw_item(settings.tasks_table, {"task_id": {"S": "task_1"}})


def stored_user(settings: Settings) -> dict[str, Any]:
    return raw_item(settings.users_table, {"user_id": {"S": "alice"}})


def active_ids() -> list[str]:
    return [task.task_id for task in TaskModel.active.query("active")]


def control_seq() -> int:
    try:
        return int(SchedulerStateModel.get(SCHEDULER_STATE_KEY, consistent_read=True).control_seq or 0)
    except SchedulerStateModel.DoesNotExist:
        return 0


# ---------------------------------------------------------------- moves


def test_a_move_the_table_refuses_writes_nothing(aws: Settings, clock: FakeClock) -> None:
    given_task(TaskStatus.CANCELLED)
    before = stored_task(aws)

    moved = move_task(TaskModel("task_1", user_id="alice"), TaskStatus.QUEUED, clock.now())

    assert moved is False
    assert stored_task(aws) == before and control_seq() == 0


def test_a_move_whose_source_changed_since_it_was_read_writes_nothing(aws: Settings, clock: FakeClock) -> None:
    read = given_task(TaskStatus.QUEUED, active=True)
    TaskModel("task_1").update(actions=[TaskModel.status.set(TaskStatus.COMPLETED)])  # another writer
    before = stored_task(aws)

    assert move_task(read, TaskStatus.PAUSED, clock.now()) is False
    with pytest.raises(TaskMoveRefused):
        move_task(read, TaskStatus.PAUSED, clock.now(), required=True)
    assert stored_task(aws) == before


def test_a_callers_condition_that_fails_refuses_the_move_and_its_counters(aws: Settings, clock: FakeClock) -> None:
    given_task(TaskStatus.QUEUED, queued=2, active=True)
    before = stored_task(aws)

    assert complete_if_done("task_1", clock.now()) is False  # two emails still queued

    assert stored_task(aws) == before and active_ids() == ["task_1"]


def test_the_active_index_follows_the_status_through_pause_resume_and_completion(
    aws: Settings, clock: FakeClock
) -> None:
    task = given_task(TaskStatus.PLANNING, queued=0)
    assert active_ids() == []

    assert move_task(task, TaskStatus.QUEUED, clock.now())
    assert active_ids() == ["task_1"] and task.active_sort == "alice#task_1"

    clock.advance(5)
    assert move_task(task, TaskStatus.PAUSED, clock.now())
    assert active_ids() == [] and task.active_partition == "held" and task.updated_at == clock.now()

    assert move_task(task, TaskStatus.QUEUED, clock.now(), sources=[TaskStatus.PAUSED])
    assert move_task(task, TaskStatus.SENDING, clock.now())
    assert active_ids() == ["task_1"]

    assert complete_if_done("task_1", clock.now())
    assert active_ids() == [] and TaskModel.get("task_1").status == TaskStatus.COMPLETED
    assert complete_if_done("task_1", clock.now()) is False  # exactly once


def test_a_dispatchers_late_move_to_sending_leaves_a_paused_task_paused(aws: Settings, clock: FakeClock) -> None:
    given_task(TaskStatus.PAUSED)
    before = stored_task(aws)

    assert move_task(TaskModel("task_1", user_id="alice"), TaskStatus.SENDING, clock.now()) is False

    assert stored_task(aws) == before and active_ids() == []


def test_dispatchers_hear_of_announced_moves_only(aws: Settings, clock: FakeClock) -> None:
    task = given_task(TaskStatus.PLANNING, queued=1)

    move_task(task, TaskStatus.QUEUED, clock.now())  # announced: a task to send for
    move_task(task, TaskStatus.SENDING, clock.now())  # the dispatcher's own move
    move_task(task, TaskStatus.PAUSED, clock.now())  # announced: stop sending it

    assert control_seq() == 2


def test_a_move_inside_a_transaction_is_undone_with_the_rest_of_it(aws: Settings, clock: FakeClock) -> None:
    given_user(remaining=0)
    task = given_task(TaskStatus.PLANNING)
    before = stored_task(aws)

    with pytest.raises(TransactWriteError), TransactWrite(connection=transaction_connection()) as transaction:
        move_task_in(transaction, task, TaskStatus.QUEUED, clock.now())
        transaction.update(  # a second item whose condition fails
            UserModel("alice"),
            actions=[UserModel.remaining_quota.add(-1)],
            condition=UserModel.remaining_quota >= 1,
        )

    assert stored_task(aws) == before and active_ids() == []


# ---------------------------------------------------------------- refunds


def test_a_refund_moves_both_counters_and_the_tasks_other_counters_together(aws: Settings) -> None:
    given_user(remaining=4)
    given_task(TaskStatus.SENDING, queued=3)

    refunded = refund_quota(
        task_id="task_1",
        user_id="alice",
        units=2,
        task_actions=[TASK_COUNTS.queued.add(-2), TASK_COUNTS.cancelled.add(2)],
    )

    task = TaskModel.get("task_1", consistent_read=True)
    assert refunded is True
    assert (int(task.quota_refunded), int(task.counts.queued), int(task.counts.cancelled)) == (2, 1, 2)
    assert int(UserModel.get("alice", consistent_read=True).remaining_quota) == 6


def test_a_refund_whose_task_condition_fails_moves_neither_counter(aws: Settings) -> None:
    given_user(remaining=4)
    given_task(TaskStatus.SENDING)
    task_before, user_before = stored_task(aws), stored_user(aws)

    refunded = refund_quota(
        task_id="task_1",
        user_id="alice",
        units=2,
        task_actions=[TASK_COUNTS.queued.add(-2)],
        task_condition=TaskModel.status == TaskStatus.CANCELLED,
    )

    assert refunded is False
    assert stored_task(aws) == task_before and stored_user(aws) == user_before


def test_a_refund_the_user_item_refuses_leaves_the_task_unchanged_too(aws: Settings) -> None:
    given_task(TaskStatus.SENDING)
    # A user item whose quota is not a number: the ADD fails, and with it the whole transaction.
    boto3.client("dynamodb").put_item(
        TableName=aws.users_table, Item={"user_id": {"S": "alice"}, "remaining_quota": {"S": "four"}}
    )
    task_before, user_before = stored_task(aws), stored_user(aws)

    with pytest.raises(TransactWriteError):
        refund_quota(task_id="task_1", user_id="alice", units=2, task_actions=[TASK_COUNTS.queued.add(-2)])

    assert stored_task(aws) == task_before and stored_user(aws) == user_before


def test_a_refund_and_a_move_share_one_task_update_in_the_callers_transaction(aws: Settings, clock: FakeClock) -> None:
    given_user(remaining=4)
    task = given_task(TaskStatus.PLANNING)
    move = task_move(task, TaskStatus.QUEUED, clock.now(), actions=[TASK_COUNTS.total.set(3)])

    with TransactWrite(connection=transaction_connection()) as transaction:
        refund_in(
            transaction,
            task_id="task_1",
            user_id="alice",
            units=2,
            task_actions=move.actions,
            task_condition=move.condition,
        )

    stored = TaskModel.get("task_1", consistent_read=True)
    assert (stored.status, int(stored.quota_refunded), int(stored.counts.total)) == (TaskStatus.QUEUED, 2, 3)
    assert active_ids() == ["task_1"]
    assert int(UserModel.get("alice", consistent_read=True).remaining_quota) == 6


def test_a_refund_of_nothing_leaves_the_user_item_alone(aws: Settings) -> None:
    given_user(remaining=4)
    given_task(TaskStatus.CANCELLED)
    user_before = stored_user(aws)

    assert refund_quota(task_id="task_1", user_id="alice", units=0, task_actions=[TASK_COUNTS.queued.set(0)])

    assert stored_user(aws) == user_before and int(TaskModel.get("task_1").counts.queued) == 0


def test_a_negative_refund_is_refused_before_any_write(aws: Settings) -> None:
    with pytest.raises(ValueError, match="negative"):
        refund_quota(task_id="task_1", user_id="alice", units=-1)
