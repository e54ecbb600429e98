"""The late-start guard: a campaign is not started long after its time. A task whose sending would
begin more than its `max_lateness` (or the stack's default, 24 h) after its reference time
(`scheduled_at`, or `created_at` for a task sent as soon as planned) moves to `expired` with the
reason `late_start:<lateness>` instead of going out late; its user confirms to send it anyway
(`confirm_late_start`: POST /api/scheduler/tasks/{id}/send-late) or cancels it.

"Would begin": the task may send (scheduled, queued, waiting), no dispatcher claimed any of it yet
(`began_at`, set in the first claim's own transaction) and nothing of it was sent, failed or left
unknown. A task that began is never expired, and one its user confirmed never again: a dispatcher
that first sees the task late while another's first claim is in flight either finds `began_at` set
(its expiry is refused) or expired the task first (that claim is refused), never both.
Dispatchers apply the rule to each task the first time an invocation sees it (core.dispatch's
reload): one conditional write, so when several dispatchers (one per service of the task) find it
late at once exactly one moves it, and none sends it. The user's quota reserved for the task stays
reserved while it is expired, as for a paused task, until the user confirms or cancels
(docs/late-start.md)."""

from __future__ import annotations

from dataclasses import dataclass

from pynamodb.expressions.condition import Condition

from core.dispatch.send_windows import SendWindow
from core.errors import InvalidState
from core.states import TaskStatus
from core.storage.models import TASK_COUNTS, TaskModel
from core.task_transitions import move_task

# The statuses from which a task that has not begun may expire (core.states.TASK_TRANSITIONS).
EXPIRABLE = (TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.WAITING)
REASON_PREFIX = "late_start:"
SEND_LATE_ROUTE = "POST /api/scheduler/tasks/{task_id}/send-late"

# Counters that show sending began: an email SES took (or may have), or one tried and failed.
BEGUN_COUNTERS = ("sent", "unknown", "failed")


class NotExpired(InvalidState):
    """send-late of a task that is not expired (409)."""

    code = "not_expired"


class TaskExpired(InvalidState):
    """An expired task is confirmed with send-late, not resumed (409)."""

    code = "task_expired"


@dataclass(frozen=True)
class Lateness:
    """How late sending of a task would begin at some instant, against its limit (seconds)."""

    seconds: float  # after its reference time; negative before it
    limit: float

    @property
    def late(self) -> bool:
        """Strictly past the limit: a task starting exactly max_lateness after its time still sends."""
        return self.seconds > self.limit


def reference_time(task: TaskModel) -> float:
    """The instant the task was meant to start: its `scheduled_at`, else its creation; under a send
    window, the first moment after that when the window opens for one of its recipients' zones (a
    campaign scheduled on a Friday evening for business hours is not late on Monday morning)."""
    meant = float(task.scheduled_at if task.scheduled_at is not None else task.created_at)
    window = SendWindow.from_item(task.send_window.as_dict() if task.send_window else None)
    if window is None:
        return meant
    zones = list(task.window_planned.as_dict()) if task.window_planned else []
    return min((window.next_open(zone, meant) for zone in zones or [window.default_zone]), default=meant)


def lateness_of(task: TaskModel, now: float, default_max_lateness: float) -> Lateness:
    limit = float(task.max_lateness) if task.max_lateness is not None else float(default_max_lateness)
    return Lateness(seconds=now - reference_time(task), limit=limit)


def has_begun(task: TaskModel) -> bool:
    if task.began_at is not None:
        return True
    counts = task.counts
    return any(int(getattr(counts, name, 0) or 0) > 0 for name in BEGUN_COUNTERS)


def should_expire(task: TaskModel, now: float, default_max_lateness: float) -> bool:
    """The rule, on the task as read: expirable status, not confirmed, not begun, and late."""
    return (
        task.status in EXPIRABLE
        and not task.late_start_confirmed
        and not has_begun(task)
        and lateness_of(task, now, default_max_lateness).late
    )


def format_lateness(seconds: float) -> str:
    """26h13m: whole hours (however many days) and minutes, rounded down."""
    minutes = max(int(seconds // 60), 0)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _still_not_begun() -> Condition:
    """The write's own guard, so a read that is already stale cannot expire a task that began or was
    confirmed meanwhile: the condition, not the read, decides. `began_at` is what a first claim
    writes; the counters cover tasks that began before it existed."""
    not_confirmed: Condition = TaskModel.late_start_confirmed.does_not_exist() | (
        TaskModel.late_start_confirmed == False  # noqa: E712 (a condition, not a comparison)
    )
    condition: Condition = TaskModel.began_at.does_not_exist() & not_confirmed
    for name in BEGUN_COUNTERS:
        counter = getattr(TASK_COUNTS, name)
        condition &= counter.does_not_exist() | (counter <= 0)
    return condition


def expire_if_late(task: TaskModel, now: float, default_max_lateness: float) -> bool:
    """True when `task` (as the caller read it) is late by the rule: it is moved to `expired` with
    the reason `late_start:<lateness>` (announced, so dispatchers drop it within a second), or a
    concurrent writer moved it first (another dispatcher expired it, it began, its user confirmed):
    either way the caller leaves it out of this look, and the next look sees what it became.
    False (and no request made) when the task is not late or may not expire."""
    if not should_expire(task, now, default_max_lateness):
        return False
    late = lateness_of(task, now, default_max_lateness)
    move_task(
        task,
        TaskStatus.EXPIRED,
        now,
        sources=EXPIRABLE,
        reason=REASON_PREFIX + format_lateness(late.seconds),
        condition=_still_not_begun(),
    )
    return True


def confirm_late_start(task: TaskModel, now: float) -> bool:
    """expired -> queued with `late_start_confirmed` set and the reason removed, in one conditional
    write (announced: dispatchers reload and send it). False when the task was not expired (nothing
    written). Its time is past, so it never goes back to `scheduled`."""
    return move_task(
        task,
        TaskStatus.QUEUED,
        now,
        sources=[TaskStatus.EXPIRED],
        actions=[TaskModel.late_start_confirmed.set(True), TaskModel.reason.remove()],
    )
