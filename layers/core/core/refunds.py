"""Quota refunds: units a task reserved but will never send go back to its user. Both halves, the
task's `quota_refunded` and the user's `remaining_quota`, move in one TransactWriteItems, so a
crash or a refused condition moves both or neither; the task's other counters (queued, cancelled,
suppressed) ride in the same task update. Retrying failed recipients takes refunded units back the
same way (rereserve_in)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from core.clock import backoff
from core.storage.models import TaskModel, UserModel, transaction_connection

# A transaction that meets another on one of its items is cancelled whole (TransactionConflict);
# the other ends within milliseconds and nothing was written, so trying again is safe.
_CONFLICT_ATTEMPTS = 5


def _quota_back_in(
    transaction: TransactWrite,
    *,
    task_id: str,
    user_id: str,
    units: int,
    task_actions: Sequence[Action],
    task_condition: Condition | None,
    user_condition: Condition | None = None,
) -> None:
    """`units` of quota from the task back to its user (negative: from the user to the task again):
    the task item (`quota_refunded += units` with the caller's actions, under `task_condition`),
    then the user item (`remaining_quota += units`), in the caller's transaction, in that order (a
    caller reading the reasons of a cancelled transaction finds them there)."""
    transaction.update(
        TaskModel(task_id),
        actions=[*task_actions, TaskModel.quota_refunded.add(units)],
        condition=task_condition,
    )
    if units != 0:
        transaction.update(UserModel(user_id), actions=[UserModel.remaining_quota.add(units)], condition=user_condition)


def refund_in(
    transaction: TransactWrite,
    *,
    task_id: str,
    user_id: str,
    units: int,
    task_actions: Sequence[Action] = (),
    task_condition: Condition | None = None,
) -> None:
    """Adds a refund of `units` to the caller's open transaction: one update of the task item (the
    caller's `task_actions` plus `quota_refunded += units`, under `task_condition`) and, when
    `units > 0`, one of the user item. A transaction holds one operation per item, so a caller that
    also moves the task's status passes that move's actions and condition here (see
    core.task_transitions.task_move)."""
    if units < 0:
        raise ValueError(f"a refund cannot be negative ({units})")
    _quota_back_in(
        transaction,
        task_id=task_id,
        user_id=user_id,
        units=units,
        task_actions=task_actions,
        task_condition=task_condition,
    )


def rereserve_in(
    transaction: TransactWrite,
    *,
    task_id: str,
    user_id: str,
    units: int,
    task_actions: Sequence[Action] = (),
    task_condition: Condition | None = None,
) -> None:
    """The reverse of refund_in, for units refunded earlier that will be sent after all (failed
    recipients queued again): the task's `quota_refunded -= units` (with the caller's
    `task_actions`, under `task_condition`), then the user's `remaining_quota -= units` under
    `remaining_quota >= units`."""
    if units <= 0:
        raise ValueError(f"a re-reservation takes at least one unit ({units})")
    _quota_back_in(
        transaction,
        task_id=task_id,
        user_id=user_id,
        units=-units,
        task_actions=task_actions,
        task_condition=task_condition,
        user_condition=UserModel.remaining_quota >= units,
    )


def refund_quota(
    *,
    task_id: str,
    user_id: str,
    units: int,
    task_actions: Sequence[Action] = (),
    task_condition: Condition | None = None,
) -> bool:
    """Refunds `units` of the task's quota to its user in one transaction of its own (see
    refund_in). False when `task_condition` did not hold: nothing was written. Transaction conflicts
    are retried; any other failure raises, with nothing written either."""
    attempt = 0
    while True:
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                refund_in(
                    transaction,
                    task_id=task_id,
                    user_id=user_id,
                    units=units,
                    task_actions=task_actions,
                    task_condition=task_condition,
                )
            return True
        except TransactWriteError as error:
            codes = {reason.code for reason in error.cancellation_reasons or [] if reason is not None}
            if "ConditionalCheckFailed" in codes:
                return False
            attempt += 1
            if "TransactionConflict" not in codes or attempt == _CONFLICT_ATTEMPTS:
                raise
        time.sleep(backoff(attempt - 1, base=0.02))
