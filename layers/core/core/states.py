"""Task and subtask states, and the moves allowed between them, named in one place."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PLANNING = "planning"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    # No service the task's user may use can send now (all unhealthy, disabled or out of daily
    # quota): `reason` says which; a dispatcher's next send for it moves it back to `sending`.
    WAITING = "waiting"
    PAUSED = "paused"
    # Sending would have begun later than the task's max_lateness after its time (core.late_start):
    # not sent; the user confirms to send anyway (-> queued) or cancels it.
    EXPIRED = "expired"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class SubtaskStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"


class ContactStatus(StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    SUPPRESSED = "suppressed"  # put on the suppression list by hand (reason `manual`)


class SuppressionReason(StrEnum):
    """Why an address is on a tenant's suppression list (core.suppressions)."""

    BOUNCED = "bounced"  # SES: a permanent bounce
    COMPLAINED = "complained"  # SES: the recipient marked it as spam
    UNSUBSCRIBED = "unsubscribed"  # the one-click link
    MANUAL = "manual"  # the tenant or an admin, through the API


# The status a contact takes when its address is suppressed: only `subscribed` contacts are planned.
CONTACT_STATUS_OF_REASON: dict[SuppressionReason, ContactStatus] = {
    SuppressionReason.BOUNCED: ContactStatus.BOUNCED,
    SuppressionReason.COMPLAINED: ContactStatus.COMPLAINED,
    SuppressionReason.UNSUBSCRIBED: ContactStatus.UNSUBSCRIBED,
    SuppressionReason.MANUAL: ContactStatus.SUPPRESSED,
}


TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    # planning -> paused: the planner finished it while its tenant's sending is held (reputation guard).
    TaskStatus.PLANNING: frozenset(
        {
            TaskStatus.SCHEDULED,
            TaskStatus.QUEUED,
            TaskStatus.WAITING,
            TaskStatus.PAUSED,
            TaskStatus.REJECTED,
            TaskStatus.CANCELLED,
        }
    ),
    # scheduled -> sending: nothing moves a due task to queued first, its dispatcher starts it;
    # scheduled -> completed: every subtask of it was suppressed (unsubscribed) before its time.
    TaskStatus.SCHEDULED: frozenset(
        {
            TaskStatus.QUEUED,
            TaskStatus.SENDING,
            TaskStatus.WAITING,
            TaskStatus.PAUSED,
            TaskStatus.CANCELLED,
            TaskStatus.COMPLETED,
            TaskStatus.EXPIRED,
        }
    ),
    TaskStatus.QUEUED: frozenset(
        {
            TaskStatus.SENDING,
            TaskStatus.WAITING,
            TaskStatus.PAUSED,
            TaskStatus.CANCELLED,
            TaskStatus.COMPLETED,
            TaskStatus.EXPIRED,
        }
    ),
    TaskStatus.SENDING: frozenset({TaskStatus.WAITING, TaskStatus.PAUSED, TaskStatus.CANCELLED, TaskStatus.COMPLETED}),
    # waiting -> expired: only while nothing of it was sent yet (core.late_start).
    TaskStatus.WAITING: frozenset(
        {TaskStatus.SENDING, TaskStatus.PAUSED, TaskStatus.CANCELLED, TaskStatus.COMPLETED, TaskStatus.EXPIRED}
    ),
    # expired -> queued: the user confirmed sending late (POST /api/scheduler/tasks/{id}/send-late).
    TaskStatus.EXPIRED: frozenset({TaskStatus.QUEUED, TaskStatus.CANCELLED}),
    # Not paused -> sending: a dispatcher's late record of a paused task must not restart it.
    TaskStatus.PAUSED: frozenset({TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.CANCELLED}),
    # completed -> queued: POST /api/tasks/{id}/retry-failed re-queues the failed recipients.
    TaskStatus.COMPLETED: frozenset({TaskStatus.QUEUED}),
    TaskStatus.CANCELLED: frozenset(),
    TaskStatus.REJECTED: frozenset(),
}

# Tasks a dispatcher may send for; they carry the sparse `active` index attributes.
DISPATCHABLE = frozenset({TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.SENDING, TaskStatus.WAITING})

# Not sent for but shown by status and stats (the `held` partition of the task index), and the
# statuses no task leaves by itself (the `done#<day>` partitions: stats shows the last days').
HELD = frozenset({TaskStatus.PAUSED, TaskStatus.EXPIRED})
FINISHED = frozenset({TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.REJECTED})

# Moves a sending dispatcher must hear about at once (control_changed): a task it may now send for,
# or one it must stop sending. `sending` is the dispatcher's own move; `completed` happens only once
# nothing is queued; `rejected` leaves `planning`, which no dispatcher sees.
ANNOUNCED = frozenset(
    {TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.PAUSED, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)


class TaskPriority(StrEnum):
    """Orders a user's tasks within the user's share of a service (core.dispatch.fairness)."""

    URGENT = "urgent"
    NORMAL = "normal"
    BULK = "bulk"


# Lower first: a user's picks go to its most urgent tasks with work, in turn among equals.
PRIORITY_RANK: dict[TaskPriority, int] = {TaskPriority.URGENT: 0, TaskPriority.NORMAL: 1, TaskPriority.BULK: 2}


def sources_of(target: TaskStatus) -> list[TaskStatus]:
    """Every status from which `target` may be reached (for conditional writes)."""
    return [source for source, targets in TASK_TRANSITIONS.items() if target in targets]


def can_move(source: str, target: TaskStatus) -> bool:
    """Whether the table allows `source -> target` (a stored status; an unknown one allows nothing)."""
    return any(source == known and target in targets for known, targets in TASK_TRANSITIONS.items())
