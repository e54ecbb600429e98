"""Where a task's status changes: every move goes through here, allowed by the transition table in
core.states and written as one conditional UpdateItem (or one item of a caller's transaction).

A move also keeps the sparse task index in step (`active_partition`: `active` exactly while its
status is in DISPATCHABLE, `held` while paused, `done#<day>` once finished; `active_sort` user#task),
sets `updated_at`, and tells sending
dispatchers when its target is in ANNOUNCED. The condition, not an earlier read, decides: a move
refused because the task moved meanwhile writes nothing and returns False."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from core.clock import utc_day
from core.dispatch.control import control_changed
from core.errors import InvalidState
from core.states import ANNOUNCED, DISPATCHABLE, FINISHED, HELD, TaskStatus, sources_of
from core.storage.models import TASK_COUNTS, TaskModel, update_if

ACTIVE_PARTITION = "active"  # the partition of the sparse `active` index that dispatchers read
HELD_PARTITION = "held"  # paused tasks: not sent, still counted by status and stats


class TaskMoveRefused(InvalidState):
    """A move the caller required did not happen: the task was not in an allowed status (or a
    condition the caller added did not hold)."""


@dataclass(frozen=True)
class TaskMove:
    """One move as an update: what to write on the task item and the condition it is written under."""

    target: TaskStatus
    actions: list[Action]
    condition: Condition


def active_sort(user_id: str, task_id: str) -> str:
    """The `active` index's sort key: users, then their tasks (the dispatcher's round robin)."""
    return f"{user_id}#{task_id}"


def user_tasks_in(user_id: str, *partitions: str, attributes: list[str] | None = None) -> Iterator[TaskModel]:
    """The tenant's tasks in these partitions of the task index (`active`: those that may send;
    `held`: paused), read without touching its finished ones however many it has."""
    mine = TaskModel.active_sort.startswith(active_sort(user_id, ""))
    for partition in partitions:
        yield from TaskModel.active.query(partition, mine, attributes_to_get=attributes)


def allowed_sources(target: TaskStatus, only: Iterable[TaskStatus] | None = None) -> list[TaskStatus]:
    """The statuses `target` may be reached from, narrowed to `only` when the caller gives it (say,
    resume moves paused tasks only). Asking for a move the table does not allow is a bug: it raises."""
    table = sources_of(target)
    if only is None:
        return table
    narrowed = [TaskStatus(source) for source in only]
    refused = [source for source in narrowed if source not in table]
    if refused or not narrowed:
        raise ValueError(f"the transition table has no move {refused or 'from nowhere'} -> {target}")
    return narrowed


def index_partition(status: TaskStatus, now: float) -> str | None:
    """Which partition of the task index a task in `status` sits in: dispatchers read `active`
    only; status and stats read `active`, `held` and the last days' `done#<day>` (core.api.scheduler_status)."""
    if status in DISPATCHABLE:
        return ACTIVE_PARTITION
    if status in HELD:
        return HELD_PARTITION
    if status in FINISHED:
        return finished_partition(now)
    return None  # planning: not shown until planned


def finished_partition(now: float) -> str:
    return f"done#{utc_day(now)}"


def index_actions(target: TaskStatus, user_id: str | None, task_id: str, now: float) -> list[Action]:
    """The task index attributes a task in `target` carries (set) or must not carry (removed)."""
    partition = index_partition(target, now)
    if partition is None:
        return [TaskModel.active_partition.remove(), TaskModel.active_sort.remove()]
    if not user_id:
        if partition != ACTIVE_PARTITION:  # its sort key was set when it could send (complete_if_done knows no user)
            return [TaskModel.active_partition.set(partition)]
        raise ValueError(f"moving task {task_id} to {target} needs its user_id (the `active` index sort key)")
    return [TaskModel.active_partition.set(partition), TaskModel.active_sort.set(active_sort(user_id, task_id))]


def task_move(
    task: TaskModel,
    target: TaskStatus,
    now: float,
    *,
    sources: Iterable[TaskStatus] | None = None,
    reason: str | None = None,
    actions: Sequence[Action] = (),
    condition: Condition | None = None,
) -> TaskMove:
    """Builds the update of `task` (its `task_id`, and `user_id` for an active target) to `target`:
    status, reason, index attributes, `updated_at` and the caller's extra `actions` (counters,
    lease fields), under "status is one of the allowed sources" and the caller's `condition`."""
    allowed = TaskModel.status.is_in(*allowed_sources(target, sources))
    return TaskMove(
        target=target,
        actions=[
            TaskModel.status.set(target),
            *([TaskModel.reason.set(reason)] if reason is not None else []),
            *index_actions(target, task.user_id, task.task_id, now),
            TaskModel.updated_at.set(now),
            *actions,
        ],
        condition=allowed if condition is None else allowed & condition,
    )


def announce(target: TaskStatus) -> None:
    """After a move is written (for a transaction: after it committed): sending dispatchers reload
    their tasks within a second when the target matters to them."""
    if target in ANNOUNCED:
        control_changed()


def move_task(
    task: TaskModel,
    target: TaskStatus,
    now: float,
    *,
    sources: Iterable[TaskStatus] | None = None,
    reason: str | None = None,
    actions: Sequence[Action] = (),
    condition: Condition | None = None,
    required: bool = False,
) -> bool:
    """Moves `task` to `target` in one conditional UpdateItem (see task_move); on success `task`
    holds the stored item (the update's ALL_NEW answer). False when the task was not in an allowed
    status or `condition` failed: nothing is written. `required` raises TaskMoveRefused instead."""
    move = task_move(task, target, now, sources=sources, reason=reason, actions=actions, condition=condition)
    if not update_if(task, move.actions, move.condition):
        if required:
            raise TaskMoveRefused(f"task {task.task_id} could not move to {target}: it moved meanwhile")
        return False
    announce(target)
    return True


def move_task_in(
    transaction: TransactWrite,
    task: TaskModel,
    target: TaskStatus,
    now: float,
    *,
    sources: Iterable[TaskStatus] | None = None,
    reason: str | None = None,
    actions: Sequence[Action] = (),
    condition: Condition | None = None,
) -> TaskMove:
    """Adds the move to the caller's open transaction (a refused move cancels all of it). The caller
    calls `announce(move.target)` once the transaction committed. A transaction holds one operation
    per item: to refund on the same task item, pass `task_move(...)` to core.refunds.refund_in."""
    move = task_move(task, target, now, sources=sources, reason=reason, actions=actions, condition=condition)
    transaction.update(TaskModel(task.task_id), actions=move.actions, condition=move.condition)
    return move


def complete_if_done(task_id: str, now: float) -> bool:
    """Completes the task exactly once, when nothing of it is queued: the condition, not a read,
    decides, so every writer that may have sent or dropped its last queued email can call it."""
    return move_task(TaskModel(task_id), TaskStatus.COMPLETED, now, condition=TASK_COUNTS.queued <= 0)
