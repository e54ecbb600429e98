"""Tasks (campaigns): creation with every reference checked, reading, listing, cancelling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.api.auth import Caller
from core.api.ownership import load_contacts, load_sender, load_task, tenant_user
from core.api.paging import decode_cursor, encode_cursor
from core.api.schemas import TaskCreated, TaskIn, TaskOut, TaskPage, task_out, unique
from core.clock import Clock
from core.errors import InsufficientQuota, InvalidInput, InvalidState, NotFound, ServiceUnavailable
from core.mail.rendering import load_template
from core.planning.planner_jobs import PlannerJob, enqueue
from core.planning.routing import NoServiceAvailable
from core.states import ContactStatus, TaskStatus, can_move
from core.storage.ids import new_id
from core.storage.models import EmailServiceModel, TaskModel
from core.suppressions import suppressed_reasons
from core.task_transitions import move_task

TASK_ID_PATTERN = r"task_[0-9a-f]{24}"


@dataclass(frozen=True)
class TaskDeps:
    clock: Clock
    sqs: Any
    planner_queue_url: str


def _check_references(caller: Caller, request: TaskIn) -> int | None:
    """Checks everything the task names belongs to the caller. Returns the number of deliverable
    recipients when it is known now (explicit contacts only), else None."""
    if not request.contacts and request.recipient_rule is None:
        raise InvalidInput("recipient_rule", "give contacts, a recipient_rule, or both")
    load_sender(caller.user_id, request.sender_id)
    for position, template_id in enumerate(request.templates):
        try:
            load_template(caller.user_id, template_id)
        except NotFound as error:
            raise NotFound("template", template_id, field=f"templates[{position}]") from error
    contact_ids = unique(request.contacts or [])
    if not contact_ids:
        return None
    found = load_contacts(caller.user_id, contact_ids)
    for position, contact_id in enumerate(request.contacts or []):
        if contact_id not in found:
            raise NotFound("contact", contact_id, field=f"contacts[{position}]")
    if request.recipient_rule is not None:
        return None
    deliverable = [contact.contact_id for contact in found.values() if contact.status == ContactStatus.SUBSCRIBED]
    # The suppression list wins over a contact's status (an address listed before its contact existed).
    return len(deliverable) - len(suppressed_reasons(caller.user_id, deliverable))


def create_task(caller: Caller, request: TaskIn, deps: TaskDeps) -> TaskCreated:
    user = tenant_user(caller)
    known_recipients = _check_references(caller, request)
    services = list(EmailServiceModel.batch_get(list(user.service_ids or []))) if user.service_ids else []
    if not any(service.enabled for service in services):
        raise NoServiceAvailable("no enabled email service is assigned to you; ask an administrator")
    if known_recipients is not None:
        if known_recipients == 0:
            raise InvalidInput("contacts", "none of these contacts can receive email (unsubscribed or bounced)")
        if known_recipients > int(user.remaining_quota):
            raise InsufficientQuota(
                f"task needs {known_recipients} emails but only {int(user.remaining_quota)} remain in your quota",
                [{"field": "contacts", "reason": "insufficient_quota"}],
            )
    now = deps.clock.now()
    rule = request.recipient_rule
    task = TaskModel(
        new_id("task"),
        user_id=caller.user_id,
        name=request.name,
        sender_id=request.sender_id,
        template_ids=unique(request.templates),
        contact_ids=unique(request.contacts or []),
        include_tags=unique(rule.include_tags) if rule else [],
        exclude_tags=unique(rule.exclude_tags) if rule else [],
        has_rule=rule is not None,
        scheduled_at=request.scheduled_at.timestamp() if request.scheduled_at else None,
        status=TaskStatus.PLANNING,
        created_at=now,
        updated_at=now,
        priority=request.priority.value,
        max_lateness=request.max_lateness,
        send_window=request.send_window.model_dump() if request.send_window else None,
        # Per-zone counters of a windowed task (the planner and the dispatcher add to them).
        window_planned={} if request.send_window else None,
        window_done={} if request.send_window else None,
    )
    task.save(condition=TaskModel.task_id.does_not_exist())
    try:
        enqueue(deps.sqs, deps.planner_queue_url, PlannerJob(task_id=task.task_id))
    except (BotoCoreError, ClientError) as error:
        move_task(task, TaskStatus.REJECTED, deps.clock.now(), reason="planner_unavailable")
        raise ServiceUnavailable("the planner queue is unavailable; try again shortly") from error
    return TaskCreated(task_id=task.task_id, status=task.status)


def get_task(caller: Caller, task_id: str) -> TaskOut:
    return task_out(load_task(caller, task_id))


def list_tasks(caller: Caller, cursor: str | None, limit: int) -> TaskPage:
    """The caller's tasks, newest first (admins: everyone's, in task-id order per partition)."""
    after = decode_cursor(cursor, TASK_ID_PATTERN)
    tasks: list[TaskModel]
    if caller.is_admin:
        start = {"task_id": {"S": after}} if after else None
        tasks = list(TaskModel.scan(limit=limit, last_evaluated_key=start))
    else:
        condition = TaskModel.task_id < after if after else None
        tasks = list(TaskModel.by_user.query(caller.user_id, condition, scan_index_forward=False, limit=limit))
    next_cursor = encode_cursor(tasks[-1].task_id) if len(tasks) == limit else None
    return TaskPage(tasks=[task_out(task) for task in tasks], cursor=next_cursor)


def cancel_task(caller: Caller, task_id: str, deps: TaskDeps) -> TaskOut:
    """Stops the task at once; a planner job then cancels its queued subtasks and refunds them.
    Idempotent: cancelling a cancelled task writes nothing and schedules its refund sweep again
    (harmless)."""
    task = load_task(caller, task_id)
    if task.status != TaskStatus.CANCELLED:
        if not can_move(task.status, TaskStatus.CANCELLED):
            raise InvalidState(f"a {task.status} task cannot be cancelled")
        # Announced: a dispatcher sending it stops within a second.
        if not move_task(task, TaskStatus.CANCELLED, deps.clock.now(), reason="cancelled_by_user"):
            task.refresh(consistent_read=True)
            if task.status != TaskStatus.CANCELLED:  # else a concurrent cancel won: same outcome
                raise InvalidState("the task finished or changed state meanwhile; read it again")
    try:
        enqueue(deps.sqs, deps.planner_queue_url, PlannerJob(task_id=task_id, job="cancel"))
    except (BotoCoreError, ClientError) as error:
        # The task is cancelled (nothing more is sent); its refund sweep waits for a retry.
        raise ServiceUnavailable("task cancelled, but its refund could not be scheduled; retry") from error
    task.refresh(consistent_read=True)
    return task_out(task)
