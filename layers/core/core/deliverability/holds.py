"""Sending holds of the reputation guard: what a hold does to a tenant or a service, and what
clearing it undoes (docs/reputation.md).

- A tenant's hold (`UserModel.sending_hold`): every open task of the tenant (scheduled, queued,
  sending, waiting) moves to `paused` with the reason `reputation_hold`, and sending dispatchers are
  told (control_changed), so their next claim fails its control check and they reload without those
  tasks. Tasks the planner finishes while the hold is set end `paused` too (pause_if_held), and the
  tenant cannot resume them (require_not_held) until an admin clears the hold.
- A service's hold (`EmailServiceModel.sending_hold`): the service counts as unable to send, like a
  disabled or unhealthy one (core.planning.routing, core.dispatch.dispatcher), so its dispatcher stops
  and its queued work fails over or waits with the reason `reputation_hold:<service>`.

A hold is written once, by a conditional write under "not held", in a transaction with a check that
the scope's window was not restarted since the guard read it (core.deliverability.reputation), so a
guard that read the counters before an admin's resume cannot hold the scope again on old numbers."""

from __future__ import annotations

import time

from aws_lambda_powertools.metrics import MetricUnit
from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from core.clock import backoff
from core.dispatch import metrics
from core.dispatch.control import control_changed
from core.errors import Conflict
from core.states import DISPATCHABLE, TaskStatus
from core.storage.models import (
    EmailServiceModel,
    ReputationModel,
    TaskModel,
    UserModel,
    transaction_connection,
    update_if,
)
from core.task_transitions import ACTIVE_PARTITION, HELD_PARTITION, announce, move_task, task_move, user_tasks_in

REPUTATION_HOLD = "reputation_hold"  # a task's reason while its tenant's sending is held
# The scope's item that counts the admin's resumes (sorts after every hour bucket, so the guard's one
# Query of the window reads it first: core.deliverability.reputation).
RESETS_BUCKET = "~resets"

# EMF metric (core.dispatch.metrics): one per hold written, dimension Scope = user | service.
REPUTATION_HOLD_METRIC = "ReputationHold"
SCOPE_DIMENSION = "Scope"

_CONFLICT_ATTEMPTS = 5


class SendingHeld(Conflict):
    """The tenant's sending is held by the reputation guard: only an admin resumes it."""

    code = REPUTATION_HOLD


def user_scope(user_id: str) -> str:
    return f"user#{user_id}"


def service_scope(service_id: str) -> str:
    return f"service#{service_id}"


def _window_unchanged(resets_seen: int) -> Condition:
    same: Condition = ReputationModel.resets == resets_seen
    return ReputationModel.resets.does_not_exist() | same if resets_seen == 0 else same


def _hold_written(
    scope: str, resets_seen: int, item: UserModel | EmailServiceModel, actions: list[Action], condition: Condition
) -> bool:
    """One transaction: the scope's window still the one the guard read, and the item's hold."""
    attempt = 0
    while True:
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.condition_check(
                    ReputationModel, scope, RESETS_BUCKET, condition=_window_unchanged(resets_seen)
                )
                transaction.update(item, actions=actions, condition=condition)
            return True
        except TransactWriteError as error:
            codes = {reason.code for reason in error.cancellation_reasons or [] if reason is not None}
            if "ConditionalCheckFailed" in codes:
                return False  # already held, the window restarted meanwhile, or no such user/service
            attempt += 1
            if "TransactionConflict" not in codes or attempt == _CONFLICT_ATTEMPTS:
                raise
        time.sleep(backoff(attempt - 1, base=0.02))


def publish_hold_metric(scope_kind: str) -> None:
    document = metrics.document({SCOPE_DIMENSION: scope_kind})
    document.add_metric(name=REPUTATION_HOLD_METRIC, unit=MetricUnit.Count, value=1)
    metrics.publish([document])


# ---------------------------------------------------------------- tenants


def hold_user(user_id: str, reason: str, now: float, *, resets_seen: int) -> int | None:
    """Holds the tenant's sending and pauses its open tasks; the number paused, or None when the
    hold was not written (already held, window restarted since it was read, unknown user)."""
    written = _hold_written(
        user_scope(user_id),
        resets_seen,
        UserModel(user_id),
        [UserModel.sending_hold.set(reason), UserModel.sending_hold_at.set(now)],
        UserModel.user_id.exists() & UserModel.sending_hold.does_not_exist(),
    )
    if not written:
        return None
    publish_hold_metric("user")
    return pause_open_tasks(user_id, now)


def pause_open_tasks(user_id: str, now: float) -> int:
    """Every task of the tenant that may send moves to `paused` (reason reputation_hold); one
    announcement for all of them. A task that moved meanwhile (finished, cancelled) is left alone."""
    paused = 0
    for task in user_tasks_in(user_id, ACTIVE_PARTITION):  # exactly the tenant's DISPATCHABLE tasks
        move = task_move(task, TaskStatus.PAUSED, now, sources=sorted(DISPATCHABLE), reason=REPUTATION_HOLD)
        if update_if(task, move.actions, move.condition):
            paused += 1
    if paused:
        announce(TaskStatus.PAUSED)
    return paused


def user_hold(user_id: str) -> str | None:
    """The tenant's hold reason (a consistent read), None when it may send."""
    try:
        return UserModel.get(user_id, consistent_read=True, attributes_to_get=["user_id", "sending_hold"]).sending_hold
    except UserModel.DoesNotExist:
        return None


def require_not_held(user_id: str) -> None:
    """Refuses (409 reputation_hold) what would let a held tenant send again."""
    reason = user_hold(user_id)
    if reason is not None:
        raise SendingHeld(
            f"sending is held by the reputation guard ({reason}); an administrator must resume it",
            [{"field": None, "reason": REPUTATION_HOLD}],
        )


def pause_if_held(task: TaskModel, now: float) -> bool:
    """For a task that just became able to send (the planner's finish): paused when its tenant is
    held, as a guard that held the tenant meanwhile may have swept its tasks before this one."""
    if user_hold(task.user_id) is None:
        return False
    return move_task(task, TaskStatus.PAUSED, now, sources=sorted(DISPATCHABLE), reason=REPUTATION_HOLD)


def clear_user_hold(user_id: str) -> str | None:
    """Removes the tenant's hold; the reason it had, or None when it was not held."""
    return _hold_cleared(UserModel.get(user_id, consistent_read=True))


def _hold_cleared(holder: UserModel | EmailServiceModel) -> str | None:
    """Removes a tenant's or a service's hold (the same two attributes on both); the reason it had."""
    reason = holder.sending_hold
    if reason is None:
        return None
    model = type(holder)
    update_if(holder, [model.sending_hold.remove(), model.sending_hold_at.remove()], model.sending_hold.exists())
    return reason


def resume_held_tasks(user_id: str, now: float) -> list[TaskModel]:
    """The tenant's tasks the hold paused (reason reputation_hold, not those it paused itself) go
    back to queued, or scheduled while due later; their reason is removed."""
    resumed = []
    for task in user_tasks_in(user_id, HELD_PARTITION):  # the tenant's paused tasks
        if task.reason != REPUTATION_HOLD:
            continue
        target = TaskStatus.SCHEDULED if (task.scheduled_at or 0) > now else TaskStatus.QUEUED
        move = task_move(
            task,
            target,
            now,
            sources=[TaskStatus.PAUSED],
            actions=[TaskModel.reason.remove()],
            condition=TaskModel.reason == REPUTATION_HOLD,
        )
        if update_if(task, move.actions, move.condition):
            resumed.append(task)
    if resumed:
        announce(TaskStatus.QUEUED)
    return resumed


# ---------------------------------------------------------------- services


def hold_service(service_id: str, reason: str, now: float, *, resets_seen: int) -> bool:
    """Holds the service; its sending dispatcher hears of it at its next look and stops (its queued
    work fails over). False when not written (already held, window restarted, unknown service)."""
    written = _hold_written(
        service_scope(service_id),
        resets_seen,
        EmailServiceModel(service_id),
        [EmailServiceModel.sending_hold.set(reason), EmailServiceModel.sending_hold_at.set(now)],
        EmailServiceModel.service_id.exists() & EmailServiceModel.sending_hold.does_not_exist(),
    )
    if written:
        publish_hold_metric("service")
        control_changed()
    return written


def clear_service_hold(service_id: str) -> str | None:
    """Removes the service's hold; the reason it had, or None when it was not held."""
    reason = _hold_cleared(EmailServiceModel.get(service_id, consistent_read=True))
    if reason is not None:
        control_changed()  # dispatchers reload the service
    return reason
