"""One-click unsubscribe (RFC 8058): the signed link in every email lands here.

The contact becomes `unsubscribed` (a bounced or complained contact keeps its stronger status),
so no later plan includes it; and because a campaign may already hold a queued subtask for it,
those subtasks move `queued -> suppressed` (conditional: a dispatcher's claim and this move race
safely, exactly one wins) and their quota goes back to the user."""

from __future__ import annotations

from dataclasses import dataclass

from core.clock import Clock
from core.mail.unsubscribe import verify_unsubscribe
from core.refunds import refund_quota
from core.states import ContactStatus, SubtaskStatus, TaskStatus
from core.storage.ids import subtask_partition
from core.storage.models import TASK_COUNTS, ContactModel, SubtaskModel, TaskModel, update_if
from core.task_transitions import complete_if_done

# Tasks that may still hold a queued subtask for the contact.
_OPEN = (
    TaskStatus.PLANNING,
    TaskStatus.SCHEDULED,
    TaskStatus.QUEUED,
    TaskStatus.SENDING,
    TaskStatus.WAITING,
    TaskStatus.PAUSED,
)


@dataclass(frozen=True)
class UnsubscribeResult:
    unsubscribed: bool  # False when the contact was already unsubscribed (or is gone)
    suppressed_subtasks: int


def _suppress_queued(subtask: SubtaskModel) -> bool:
    return update_if(
        subtask,
        [
            SubtaskModel.status.set(SubtaskStatus.SUPPRESSED),
            SubtaskModel.queue_key.remove(),
            SubtaskModel.error.set("recipient unsubscribed"),
        ],
        SubtaskModel.status == SubtaskStatus.QUEUED,
    )


def unsubscribe(token: str, signing_key: str, clock: Clock) -> UnsubscribeResult:
    claim = verify_unsubscribe(signing_key, token)
    now = clock.now()
    contact = ContactModel(claim.user_id, claim.contact_id)
    changed = update_if(
        contact,
        [ContactModel.status.set(ContactStatus.UNSUBSCRIBED), ContactModel.updated_at.set(now)],
        ContactModel.contact_id.exists() & (ContactModel.status == ContactStatus.SUBSCRIBED),
    )
    suppressed = 0
    for task in TaskModel.by_user.query(claim.user_id, filter_condition=TaskModel.status.is_in(*_OPEN)):
        if not _suppress_queued(SubtaskModel(subtask_partition(task.task_id, claim.contact_id), claim.contact_id)):
            continue
        suppressed += 1
        refund_quota(
            task_id=task.task_id,
            user_id=claim.user_id,
            units=1,
            task_actions=[TASK_COUNTS.queued.add(-1), TASK_COUNTS.suppressed.add(1)],
        )
        complete_if_done(task.task_id, now)
    return UnsubscribeResult(unsubscribed=changed, suppressed_subtasks=suppressed)
