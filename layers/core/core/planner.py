"""The planner: turns a task in `planning` into one queued subtask per eligible recipient.

Two passes over the recipients, both in contact-id order and both chunked:
  1. count  - how many recipients are eligible; then reserve exactly that much of the user's quota
              in one transaction (insufficient: the task is rejected, nothing written or reserved);
  2. write  - write the subtasks with BatchWriteItem, assigning service and template by position.
Progress lives on the task (`plan.cursor`), advanced only by a conditional write that also checks
the caller still holds the planner lease, so a repeated or overlapping run changes nothing twice.
The lease outlives any invocation (settings.planner_lease_seconds > Lambda timeout): a run that
stalls past it is dead, never a second writer. When time runs out the run returns CONTINUE and the
handler enqueues a continuation; a crashed run's message comes back after the visibility timeout.

Recipients are frozen at task creation: contacts created later are not recipients, and at most the
reserved count is written even if tags change meanwhile (fewer is refunded at the end)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from core.batch_writes import put_items
from core.clock import Clock, utc_day
from core.errors import DomainError
from core.ids import queue_key, subtask_partition
from core.models import (
    TASK_COUNTS,
    TASK_PLAN,
    ContactModel,
    EmailServiceModel,
    ServiceUsageModel,
    SubtaskModel,
    TaskModel,
    UserModel,
    transaction_connection,
    update_if,
)
from core.routing import NoServiceAvailable, ServiceCapacity, routing_cycle, service_weights
from core.states import ContactStatus, SubtaskStatus, TaskStatus


class PlanOutcome(StrEnum):
    DONE = "done"  # the task left `planning` (queued, scheduled or rejected)
    CONTINUE = "continue"  # out of time; enqueue a continuation
    SKIPPED = "skipped"  # nothing to do here: not planning, or another run holds the lease
    CANCELLED = "cancelled"  # the task was cancelled mid-planning; enqueue its refund sweep


class LeaseLost(DomainError):
    code = "lease_lost"


@dataclass
class PlannerDeps:
    clock: Clock
    dynamodb: Any  # boto3 DynamoDB client, for BatchWriteItem with our own backoff
    subtasks_table: str
    seconds_left: Callable[[], float]  # time budget left in this invocation
    owner: str  # this run's lease token
    lease_seconds: float
    page_size: int = 2000  # contacts read per chunk (one Query, well under its 1 MB page)


# ---------------------------------------------------------------- recipients


def _is_recipient(contact: ContactModel, task: TaskModel, explicit: set[str]) -> bool:
    """Named by the task (explicit id or included tag) and not excluded by tag."""
    if contact.created_at > task.created_at:
        return False
    tags = set(contact.tags or [])
    if tags & set(task.exclude_tags or []):
        return False
    return contact.contact_id in explicit or (task.has_rule and bool(tags & set(task.include_tags or [])))


def _is_deliverable(contact: ContactModel) -> bool:
    return contact.status == ContactStatus.SUBSCRIBED


def _candidate_page(task: TaskModel, cursor: str, page_size: int) -> tuple[list[ContactModel], str, bool]:
    """The next contacts after `cursor` in contact-id order: (contacts, new cursor, exhausted)."""
    if task.has_rule:
        condition = ContactModel.contact_id > cursor if cursor else None
        page = list(
            ContactModel.query(task.user_id, condition, limit=page_size, page_size=page_size, consistent_read=True)
        )
        exhausted = len(page) < page_size
        return page, (page[-1].contact_id if page else cursor), exhausted
    explicit = sorted(set(task.contact_ids or []))
    start = bisect.bisect_right(explicit, cursor) if cursor else 0
    ids = explicit[start : start + min(page_size, 100)]  # BatchGetItem takes 100 keys
    found = {
        contact.contact_id: contact
        for contact in ContactModel.batch_get([(task.user_id, contact_id) for contact_id in ids])
    }
    exhausted = start + len(ids) >= len(explicit)
    return [found[i] for i in ids if i in found], (ids[-1] if ids else cursor), exhausted


# ---------------------------------------------------------------- lease


def acquire_lease(task_id: str, deps: PlannerDeps, expected: TaskStatus) -> TaskModel | None:
    now = deps.clock.now()
    acquired = update_if(
        TaskModel(task_id),
        [
            TaskModel.planner_lease_owner.set(deps.owner),
            TaskModel.planner_lease_until.set(now + deps.lease_seconds),
            TASK_PLAN.invocations.add(1),
        ],
        (TaskModel.status == expected)
        & (
            TaskModel.planner_lease_until.does_not_exist()
            | (TaskModel.planner_lease_until < now)
            | (TaskModel.planner_lease_owner == deps.owner)
        ),
    )
    return TaskModel.get(task_id, consistent_read=True) if acquired else None


def release_lease(task: TaskModel, deps: PlannerDeps) -> None:
    # False: another run took the lease over; nothing of ours to release.
    update_if(task, [TaskModel.planner_lease_until.set(0)], TaskModel.planner_lease_owner == deps.owner)


def _holding(deps: PlannerDeps) -> Any:
    return (TaskModel.planner_lease_owner == deps.owner) & (TaskModel.status == TaskStatus.PLANNING)


def _commit(task: TaskModel, deps: PlannerDeps, old_cursor: str, actions: list[Any]) -> None:
    if not update_if(task, actions, _holding(deps) & (TASK_PLAN.cursor == old_cursor)):
        raise LeaseLost("planner lease lost or task left planning")


# ---------------------------------------------------------------- phases


def _count_chunk(task: TaskModel, deps: PlannerDeps) -> bool:
    """Counts one page; returns True when the count pass is complete."""
    cursor = task.plan.cursor
    page, new_cursor, exhausted = _candidate_page(task, cursor, deps.page_size)
    explicit = set(task.contact_ids or [])
    named = [contact for contact in page if _is_recipient(contact, task, explicit)]
    eligible = sum(1 for contact in named if _is_deliverable(contact))
    actions = [
        TASK_PLAN.cursor.set("" if exhausted else new_cursor),
        TASK_PLAN.counted.add(eligible),
        TASK_COUNTS.suppressed.add(len(named) - eligible),
        TASK_PLAN.chunks.add(1),
        TaskModel.updated_at.set(deps.clock.now()),
    ]
    if exhausted:
        actions.append(TASK_PLAN.phase.set("reserve"))
    _commit(task, deps, cursor, actions)
    task.refresh(consistent_read=True)
    return exhausted


def _service_capacities(user: UserModel, now: float) -> list[ServiceCapacity]:
    service_ids = list(user.service_ids or [])
    services = list(EmailServiceModel.batch_get(service_ids)) if service_ids else []
    day = utc_day(now)
    used = {
        usage.service_id: int(usage.used)
        for usage in ServiceUsageModel.batch_get([(s.service_id, day) for s in services])
    }
    return [
        ServiceCapacity(
            service_id=s.service_id,
            enabled=bool(s.enabled),
            healthy=bool(s.is_healthy),
            sending_rate=float(s.sending_rate),
            remaining_today=max(0, int(s.daily_quota) - used.get(s.service_id, 0)),
        )
        for s in services
    ]


def _reject(task: TaskModel, deps: PlannerDeps, reason: str) -> PlanOutcome:
    task.update(
        actions=[
            TaskModel.status.set(TaskStatus.REJECTED),
            TaskModel.reason.set(reason),
            TaskModel.planner_lease_until.set(0),
            TaskModel.updated_at.set(deps.clock.now()),
        ],
        condition=_holding(deps) & TaskModel.quota_reserved.does_not_exist(),
    )
    return PlanOutcome.DONE


def _reserve(task: TaskModel, deps: PlannerDeps) -> PlanOutcome | None:
    """Reserves the counted quota once. Returns an outcome when planning ends here."""
    needed = int(task.plan.counted)
    if needed == 0:
        return _reject(task, deps, "no_eligible_recipients")
    user = UserModel.get(task.user_id, consistent_read=True)
    try:
        cycle = routing_cycle(service_weights(_service_capacities(user, deps.clock.now())))
    except NoServiceAvailable:
        return _reject(task, deps, "no_service")
    try:
        with TransactWrite(connection=transaction_connection()) as transaction:
            transaction.update(
                UserModel(task.user_id),
                actions=[UserModel.remaining_quota.add(-needed)],
                condition=UserModel.remaining_quota >= needed,
            )
            transaction.update(
                TaskModel(task.task_id),
                actions=[
                    TaskModel.quota_reserved.set(needed),
                    TASK_PLAN.phase.set("write"),
                    TASK_PLAN.routing.set(cycle),
                    TaskModel.updated_at.set(deps.clock.now()),
                ],
                condition=_holding(deps) & TaskModel.quota_reserved.does_not_exist() & (TASK_PLAN.phase == "reserve"),
            )
    except TransactWriteError:
        task.refresh(consistent_read=True)
        if task.planner_lease_owner != deps.owner or task.status != TaskStatus.PLANNING:
            raise LeaseLost("planner lease lost during reservation") from None
        if task.quota_reserved is not None:
            return None
        if int(UserModel.get(task.user_id, consistent_read=True).remaining_quota) < needed:
            return _reject(task, deps, "insufficient_quota")
        raise  # a conflict we cannot explain: let the message be retried
    task.refresh(consistent_read=True)
    return None


def _subtasks_for(
    task: TaskModel, recipients: Iterable[ContactModel], first_seq: int, now: float
) -> list[SubtaskModel]:
    cycle = list(task.plan.routing)
    templates = list(task.template_ids)
    subtasks = []
    for offset, contact in enumerate(recipients):
        seq = first_seq + offset
        service_id = cycle[seq % len(cycle)]
        subtasks.append(
            SubtaskModel(
                subtask_partition(task.task_id, contact.contact_id),
                contact.contact_id,
                task_id=task.task_id,
                user_id=task.user_id,
                seq=seq,
                email=contact.email,
                name=contact.name,
                attributes=contact.attributes.as_dict() if contact.attributes else {},
                template_id=templates[seq % len(templates)],
                service_id=service_id,
                status=SubtaskStatus.QUEUED,
                queue_key=queue_key(service_id, task.task_id),
                attempts=0,
                next_attempt_at=0,
                created_at=now,
            )
        )
    return subtasks


def _write_chunk(task: TaskModel, deps: PlannerDeps) -> bool:
    """Writes one page of subtasks; returns True when the write pass is complete."""
    cursor = task.plan.cursor
    page, new_cursor, exhausted = _candidate_page(task, cursor, deps.page_size)
    explicit = set(task.contact_ids or [])
    recipients = [c for c in page if _is_recipient(c, task, explicit) and _is_deliverable(c)]
    written = int(task.plan.written)
    room = int(task.quota_reserved or 0) - written
    recipients = recipients[: max(room, 0)]
    now = deps.clock.now()
    put_items(deps.dynamodb, deps.subtasks_table, _subtasks_for(task, recipients, written, now), deps.clock)
    actions = [
        TASK_PLAN.cursor.set(new_cursor),
        TASK_PLAN.written.add(len(recipients)),
        TASK_COUNTS.queued.add(len(recipients)),
        TASK_PLAN.chunks.add(1),
        TaskModel.updated_at.set(now),
    ]
    if exhausted or len(recipients) == room:
        actions.append(TASK_PLAN.phase.set("finish"))
    _commit(task, deps, cursor, actions)
    task.refresh(consistent_read=True)
    return task.plan.phase == "finish"


def _finish(task: TaskModel, deps: PlannerDeps) -> PlanOutcome:
    """Leaves `planning`: queued (or scheduled), totals set, unused reservation refunded."""
    now = deps.clock.now()
    written = int(task.plan.written)
    unused = int(task.quota_reserved or 0) - written
    if written == 0:
        status, reason = TaskStatus.REJECTED, "no_eligible_recipients"
    elif task.scheduled_at is not None and task.scheduled_at > now:
        status, reason = TaskStatus.SCHEDULED, None
    else:
        status, reason = TaskStatus.QUEUED, None
    task_actions = [
        TaskModel.status.set(status),
        TASK_COUNTS.total.set(written),
        TaskModel.quota_refunded.add(unused),
        TaskModel.planner_lease_until.set(0),
        TASK_PLAN.phase.set("done"),
        TaskModel.updated_at.set(now),
    ]
    if reason:
        task_actions.append(TaskModel.reason.set(reason))
    else:
        task_actions += [
            TaskModel.active_partition.set("active"),
            TaskModel.active_sort.set(f"{task.user_id}#{task.task_id}"),
        ]
    condition = _holding(deps) & (TASK_PLAN.phase == "finish")
    try:
        with TransactWrite(connection=transaction_connection()) as transaction:
            transaction.update(TaskModel(task.task_id), actions=task_actions, condition=condition)
            if unused > 0:
                transaction.update(UserModel(task.user_id), actions=[UserModel.remaining_quota.add(unused)])
    except TransactWriteError as error:
        task.refresh(consistent_read=True)
        if task.planner_lease_owner != deps.owner or task.status != TaskStatus.PLANNING:
            raise LeaseLost("planner lease lost while finishing") from error
        raise
    return PlanOutcome.DONE


# ---------------------------------------------------------------- entry point


def plan_task(task_id: str, deps: PlannerDeps) -> PlanOutcome:
    """Advances the planning of one task as far as the time budget allows."""
    task = acquire_lease(task_id, deps, TaskStatus.PLANNING)
    if task is None:
        return PlanOutcome.SKIPPED
    try:
        while True:
            phase = task.plan.phase
            if phase == "finish":
                return _finish(task, deps)
            if deps.seconds_left() <= 0:
                release_lease(task, deps)
                return PlanOutcome.CONTINUE
            if phase == "count":
                _count_chunk(task, deps)
            elif phase == "reserve":
                outcome = _reserve(task, deps)
                if outcome is not None:
                    return outcome
            elif phase == "write":
                _write_chunk(task, deps)
            else:
                return PlanOutcome.SKIPPED
    except LeaseLost:
        task.refresh(consistent_read=True)
        if task.status == TaskStatus.CANCELLED and task.planner_lease_owner == deps.owner:
            # Hand the task to its refund sweep now rather than when our lease expires.
            release_lease(task, deps)
            return PlanOutcome.CANCELLED
        return PlanOutcome.SKIPPED
