"""Claims: `queued -> sending` for the next sends in one transaction, and giving unsent claims back."""

from __future__ import annotations

import time
from collections.abc import Callable

from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from core.clock import backoff
from core.ids import queue_key
from core.models import (
    TASK_COUNTS,
    SubtaskModel,
    TaskModel,
    UserModel,
    transaction_connection,
    update_if,
)
from core.states import SubtaskStatus, TaskStatus

# Claims are made for about this much sending time ahead, in one transaction (a control change still
# takes effect at the next look: claimed emails of a paused task go back). A crash leaves at most
# that many claimed emails `unknown`.
CLAIM_AHEAD_SECONDS = 2.0
CLAIM_BATCH_LIMIT = 25
CLAIM_ATTEMPTS = 4


def _claim_actions(owner: str, service_id: str) -> list[Action]:
    return [
        SubtaskModel.status.set(SubtaskStatus.SENDING),
        SubtaskModel.claim_owner.set(owner),
        SubtaskModel.inflight_key.set(service_id),
        SubtaskModel.queue_key.remove(),
    ]


def _claimed_locally(subtask: SubtaskModel, owner: str, service_id: str) -> None:
    """What the claim wrote, on the object the outcome is later recorded from (a transaction does
    not return the new items)."""
    subtask.status = SubtaskStatus.SENDING
    subtask.claim_owner = owner
    subtask.inflight_key = service_id
    subtask.queue_key = None


def update_all(
    subtasks: list[SubtaskModel], actions_of: Callable[[SubtaskModel], list[Action]], condition: Condition
) -> list[SubtaskModel]:
    """Applies each subtask's actions where `condition` holds, in one TransactWriteItems (at most
    CLAIM_BATCH_LIMIT subtasks); those whose condition fails (a canceller, an unsubscribe or
    another dispatcher moved them first) are left out and the rest retried. Returns the updated."""
    pending = list(subtasks)
    for attempt in range(CLAIM_ATTEMPTS):
        if len(pending) <= 1:
            break
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                for subtask in pending:
                    transaction.update(subtask, actions=actions_of(subtask), condition=condition)
        except TransactWriteError as error:
            reasons = list(error.cancellation_reasons or [])
            if len(reasons) != len(pending):
                raise
            codes = [reason.code if reason else "None" for reason in reasons]
            pending = [s for s, code in zip(pending, codes, strict=True) if code != "ConditionalCheckFailed"]
            if "TransactionConflict" in codes:
                time.sleep(backoff(attempt, base=0.02))
            continue
        return pending
    # One left, or a transaction that kept conflicting: one by one.
    return [subtask for subtask in pending if update_if(subtask, actions_of(subtask), condition)]


def claim_subtasks(subtasks: list[SubtaskModel], owner: str, service_id: str, now: float) -> set[tuple[str, str]]:
    """`queued -> sending` for each subtask still queued and due, in one request; returns the keys
    claimed (and sets on each object what the claim wrote: a transaction returns no items)."""
    actions = _claim_actions(owner, service_id)
    condition = (SubtaskModel.status == SubtaskStatus.QUEUED) & (SubtaskModel.next_attempt_at <= now)
    claimed = update_all(subtasks, lambda _: actions, condition)
    for subtask in claimed:
        _claimed_locally(subtask, owner, service_id)
    return {(s.partition, s.contact_id) for s in claimed}


def release_claims(subtasks: list[SubtaskModel], owner: str, now: float) -> int:
    """Claimed, unsent subtasks back to their queue; cancelled and refunded when their task was
    cancelled meanwhile (the cancel sweep leaves claimed subtasks to their dispatcher). A subtask no
    longer held (a successor recovered it as `unknown` after this invocation's lease expired) is
    left alone. Returns how many were released (their quota units are unused)."""
    released = 0
    held = (SubtaskModel.status == SubtaskStatus.SENDING) & (SubtaskModel.claim_owner == owner)
    by_task: dict[str, list[SubtaskModel]] = {}
    for subtask in subtasks:
        by_task.setdefault(subtask.task_id, []).append(subtask)
    for task_id, claimed in by_task.items():
        task = TaskModel.get(task_id, consistent_read=True)
        if task.status != TaskStatus.CANCELLED:
            released += len(update_all(claimed, _release_actions, held))
            continue
        cancelled = len(
            update_all(
                claimed,
                lambda _: [SubtaskModel.status.set(SubtaskStatus.CANCELLED), SubtaskModel.inflight_key.remove()],
                held,
            )
        )
        if cancelled:
            TaskModel(task_id).update(
                actions=[
                    TASK_COUNTS.cancelled.add(cancelled),
                    TASK_COUNTS.queued.add(-cancelled),
                    TaskModel.quota_refunded.add(cancelled),
                    TaskModel.updated_at.set(now),
                ]
            )
            UserModel(task.user_id).update(actions=[UserModel.remaining_quota.add(cancelled)])
        released += cancelled
    return released


def _release_actions(subtask: SubtaskModel) -> list[Action]:
    return [
        SubtaskModel.status.set(SubtaskStatus.QUEUED),
        SubtaskModel.queue_key.set(queue_key(subtask.service_id, subtask.task_id)),
        SubtaskModel.claim_owner.remove(),
        SubtaskModel.inflight_key.remove(),
    ]
