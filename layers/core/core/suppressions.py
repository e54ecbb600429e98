"""The suppression list: the one place an address of a tenant gets suppressed (and unsuppressed).

An entry (SuppressionsTable: `user_id`, `contact_id` from the address) means no campaign of the
tenant may mail that address, whether or not a contact holds it. `suppress` makes three idempotent,
conditional writes, in this order, and is safe to run twice or concurrently:

1. the entry: created, or its reason replaced by a stronger one (REASON_RANK), never a weaker one;
2. the contact (when it exists): `subscribed`, or the status of a weaker reason, becomes the status
   of this reason (CONTACT_STATUS_OF_REASON), so only `subscribed` contacts are planned;
3. the sweep: in every open task of the tenant (the task index's `active` and `held` partitions),
   the address's subtask (its key comes from the contact id) moves `queued -> suppressed`, its quota
   unit refunded with the task's counters.

Between 1 and 3 a dispatcher may still find the subtask queued: its claim transaction checks the
entry is absent (core.dispatch.claims), so once 1 is written the address is never claimed again;
a refused claim suppresses and refunds the subtask here (`suppress_at_claim`). Both sides move the
subtask under `status = queued`, so exactly one of them refunds. The claim check also covers what
the sweep cannot see: a task still planning, a subtask requeued after the sweep read it.

Bounced and complained addresses may also go on the SES account-level list (AccountSuppressionList),
best effort: that list is the account's, shared by every tenant, so an entry removed here stays there."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.expressions.condition import Condition

from core.dispatch.send_windows import window_done_actions
from core.errors import Conflict
from core.refunds import refund_quota
from core.states import CONTACT_STATUS_OF_REASON, ContactStatus, SubtaskStatus, SuppressionReason
from core.storage.ids import contact_id_for, subtask_partition
from core.storage.models import (
    TASK_COUNTS,
    ContactModel,
    SubtaskModel,
    SuppressionModel,
    TaskModel,
    delete_if,
    update_if,
)
from core.task_transitions import ACTIVE_PARTITION, HELD_PARTITION, complete_if_done, user_tasks_in

logger = logging.getLogger(__name__)

# A stronger reason replaces a weaker one, never the other way round: a hard bounce or a complaint
# says more about the address than a tenant's manual entry or an unsubscribe, and a complaint (the
# recipient's word, and what SES reviews an account for) says the most.
REASON_RANK: dict[SuppressionReason, int] = {
    SuppressionReason.MANUAL: 0,
    SuppressionReason.UNSUBSCRIBED: 1,
    SuppressionReason.BOUNCED: 2,
    SuppressionReason.COMPLAINED: 3,
}
# The recipient's own word: the tenant removes such an entry only with `force` (opt-out and
# anti-spam rules expect an opt-out to be honoured; a re-opt-in is the tenant's to prove).
RECIPIENT_REASONS = frozenset({SuppressionReason.UNSUBSCRIBED, SuppressionReason.COMPLAINED})
# Mirrored to the SES account-level list (its two reasons); manual and unsubscribed are the tenant's.
SES_REASON: dict[SuppressionReason, str] = {
    SuppressionReason.BOUNCED: "BOUNCE",
    SuppressionReason.COMPLAINED: "COMPLAINT",
}
MAX_DETAIL_CHARS = 500
BATCH_GET_LIMIT = 100  # DynamoDB's BatchGetItem maximum
# What a claim's ConditionCheck on the entry (user_id, contact_id) requires: no entry.
NOT_SUPPRESSED: Condition = SuppressionModel.contact_id.does_not_exist()


def weaker_reasons(reason: SuppressionReason) -> list[SuppressionReason]:
    return [other for other, rank in REASON_RANK.items() if rank < REASON_RANK[reason]]


class RecipientSuppression(Conflict):
    """The entry records the recipient's own word (unsubscribed, complained): removing it takes
    `force` (409 until then)."""

    code = "suppressed_by_recipient"


@dataclass(frozen=True)
class SuppressOutcome:
    added: bool  # the entry was created by this call
    upgraded: bool  # an existing entry's reason was replaced by this (stronger) one
    reason: SuppressionReason  # the entry's reason now (a stronger existing one is kept)
    contact_changed: bool  # the contact's status moved (it exists and was subscribed or weaker)
    suppressed_subtasks: int  # queued subtasks of open tasks moved to `suppressed` and refunded


@dataclass(frozen=True)
class AccountSuppressionList:
    """SES's account-level suppression list, for bounced and complained addresses. Built by the
    handlers from settings and a sesv2 client (None when the operator has not turned it on)."""

    ses: Any  # boto3 sesv2 client

    @classmethod
    def from_settings(cls, make_client: Callable[[], Any], enabled: bool) -> AccountSuppressionList | None:
        """The list when the operator turned the mirror on (its client made only then)."""
        return cls(make_client()) if enabled else None

    def put(self, email: str, reason: SuppressionReason) -> bool:
        """Best effort: a failure is logged and answered False, never raised (the tenant's own list
        is what sending honours; this one only spares the account)."""
        ses_reason = SES_REASON.get(reason)
        if ses_reason is None:
            return False
        try:
            self.ses.put_suppressed_destination(EmailAddress=email, Reason=ses_reason)
        except (ClientError, BotoCoreError) as error:
            logger.warning("SES account suppression list refused %s (%s): %s", email, ses_reason, error)
            return False
        return True


def _entry_written(entry: SuppressionModel, reason: SuppressionReason, detail: str | None, now: float) -> bool:
    """Creates the entry; False when it already exists (a concurrent or earlier call wrote it)."""
    return update_if(
        entry,
        [
            SuppressionModel.email.set(entry.email),
            SuppressionModel.reason.set(reason.value),
            SuppressionModel.created_at.set(now),
            *([SuppressionModel.detail.set(detail)] if detail else []),
        ],
        SuppressionModel.contact_id.does_not_exist(),
    )


def _entry_upgraded(entry: SuppressionModel, reason: SuppressionReason, detail: str | None, now: float) -> bool:
    weaker = weaker_reasons(reason)
    if not weaker:
        return False
    return update_if(
        entry,
        [
            SuppressionModel.reason.set(reason.value),
            SuppressionModel.detail.set(detail) if detail else SuppressionModel.detail.remove(),
            SuppressionModel.updated_at.set(now),
        ],
        SuppressionModel.contact_id.exists() & SuppressionModel.reason.is_in(*[r.value for r in weaker]),
    )


def _contact_moved(user_id: str, contact_id: str, reason: SuppressionReason, now: float) -> bool:
    """The contact takes the reason's status when it is subscribed or has a weaker reason's status."""
    movable = [ContactStatus.SUBSCRIBED.value, *(CONTACT_STATUS_OF_REASON[r].value for r in weaker_reasons(reason))]
    return update_if(
        ContactModel(user_id, contact_id),
        [ContactModel.status.set(CONTACT_STATUS_OF_REASON[reason].value), ContactModel.updated_at.set(now)],
        ContactModel.contact_id.exists() & ContactModel.status.is_in(*movable),
    )


def _suppressed_now(subtask: SubtaskModel, note: str) -> bool:
    """`queued -> suppressed`; False (nothing written) when it was not queued (claimed, sent,
    cancelled, suppressed by the other side of a race, or absent)."""
    return update_if(
        subtask,
        [
            SubtaskModel.status.set(SubtaskStatus.SUPPRESSED),
            SubtaskModel.queue_key.remove(),
            SubtaskModel.error.set(note),
        ],
        SubtaskModel.status == SubtaskStatus.QUEUED,
    )


def _refund_suppressed(
    task_id: str, user_id: str, units: int, now: float, by_zone: Mapping[str, int] | None = None
) -> None:
    """The quota of `units` subtasks this caller moved to `suppressed` goes back, with the task's
    counters (and, for a windowed task, its per-zone counts of recipients that left the queue), in
    one transaction; then the task completes if that was its last queued work."""
    refund_quota(
        task_id=task_id,
        user_id=user_id,
        units=units,
        task_actions=[
            TASK_COUNTS.queued.add(-units),
            TASK_COUNTS.suppressed.add(units),
            TaskModel.updated_at.set(now),
            *window_done_actions(by_zone or {}),
        ],
    )
    complete_if_done(task_id, now)


def _open_task_ids(user_id: str) -> list[str]:
    """The tenant's tasks that may send or are paused (the task index's `active` and `held`
    partitions). A task still planning is not there: what it wrote for the address is refused at
    its claim instead."""
    return [task.task_id for task in user_tasks_in(user_id, ACTIVE_PARTITION, HELD_PARTITION, attributes=["task_id"])]


def _sweep(
    user_id: str, notes: dict[str, str], task_ids: list[str], now: float, pool: ThreadPoolExecutor | None = None
) -> dict[str, int]:
    """In every open task, the listed contacts' queued subtasks move to `suppressed` and are refunded
    (one transaction per task). Which are queued is read first (consistent BatchGetItem, statuses
    only), so only those are written (`pool` at a time); one claimed or moved after the read fails
    its condition, and one queued again after it (a requeue) is refused by the next claim's check
    instead. Returns contact_id -> subtasks suppressed."""
    keys = [(subtask_partition(task_id, contact_id), contact_id) for task_id in task_ids for contact_id in notes]
    queued: list[SubtaskModel] = []
    for start in range(0, len(keys), BATCH_GET_LIMIT):
        batch = keys[start : start + BATCH_GET_LIMIT]
        attributes = ["partition", "contact_id", "task_id", "status", "timezone"]
        for subtask in SubtaskModel.batch_get(batch, consistent_read=True, attributes_to_get=attributes):
            if subtask.status == SubtaskStatus.QUEUED:
                queued.append(subtask)
    by_contact: dict[str, int] = dict.fromkeys(notes, 0)
    by_task: dict[str, int] = {}
    by_zone: dict[str, Counter[str]] = {}  # a windowed task's, per recipient zone

    def move(subtask: SubtaskModel) -> bool:
        return _suppressed_now(subtask, notes[subtask.contact_id])

    moved = list(pool.map(move, queued)) if pool is not None and len(queued) > 1 else [move(s) for s in queued]
    for subtask, done in zip(queued, moved, strict=True):
        if done:
            by_contact[subtask.contact_id] += 1
            by_task[subtask.task_id] = by_task.get(subtask.task_id, 0) + 1
            if subtask.timezone:
                by_zone.setdefault(subtask.task_id, Counter())[subtask.timezone] += 1
    for task_id, units in by_task.items():
        _refund_suppressed(task_id, user_id, units, now, by_zone.get(task_id))
    return by_contact


def _list_address(
    user_id: str, email: str, reason: SuppressionReason, detail: str | None, now: float
) -> tuple[str, bool, bool, SuppressionReason, bool]:
    """The entry and the contact of one address: (contact id, added, upgraded, reason now, contact moved)."""
    contact_id = contact_id_for(email)
    entry = SuppressionModel(user_id, contact_id, email=email.strip())
    added = _entry_written(entry, reason, detail, now)
    upgraded = not added and _entry_upgraded(entry, reason, detail, now)
    if added or upgraded:
        stored = reason
    else:
        stored = SuppressionReason(SuppressionModel.get(user_id, contact_id, consistent_read=True).reason)
    return contact_id, added, upgraded, stored, _contact_moved(user_id, contact_id, stored, now)


def suppress(
    user_id: str,
    email: str,
    reason: SuppressionReason,
    now: float,
    *,
    detail: str | None = None,
    account_list: AccountSuppressionList | None = None,
) -> SuppressOutcome:
    """Puts `email` on the tenant's list (see the module docstring). Every step runs again on a
    repeat, so a call cut short by a crash is completed by the next one; a repeat changes nothing
    that the first call already changed."""
    return suppress_many(user_id, [email], reason, now, detail=detail, account_list=account_list)[0]


def suppress_many(
    user_id: str,
    emails: Sequence[str],
    reason: SuppressionReason,
    now: float,
    *,
    detail: str | None = None,
    account_list: AccountSuppressionList | None = None,
    writers: int = 8,
) -> list[SuppressOutcome]:
    """`suppress` for several addresses of one tenant (one outcome each, in order; an address given
    twice is one, its outcomes equal): the entries and contacts written `writers` at a time, then one
    sweep of the tenant's open tasks for all of them."""
    reason = SuppressionReason(reason)
    detail = detail[:MAX_DETAIL_CHARS] if detail else None
    # One address is one entry, whatever its case or spaces: the first spelling given is kept.
    first_spelling: dict[str, str] = {}
    for email in emails:
        first_spelling.setdefault(contact_id_for(email), email)
    distinct = list(first_spelling.values())
    with ThreadPoolExecutor(max_workers=max(1, min(writers, len(distinct)))) as pool:
        listed = list(pool.map(lambda email: _list_address(user_id, email, reason, detail, now), distinct))
        notes = {contact_id: f"address suppressed ({stored.value})" for contact_id, _, _, stored, _ in listed}
        swept = _sweep(user_id, notes, _open_task_ids(user_id), now, pool)
    outcomes: dict[str, SuppressOutcome] = {}
    for email, (contact_id, added, upgraded, stored, moved) in zip(distinct, listed, strict=True):
        if account_list is not None and (added or upgraded):
            account_list.put(email.strip(), reason)
        outcomes[contact_id] = SuppressOutcome(
            added=added, upgraded=upgraded, reason=stored, contact_changed=moved, suppressed_subtasks=swept[contact_id]
        )
    return [outcomes[contact_id_for(email)] for email in emails]


def suppress_at_claim(subtask: SubtaskModel, now: float) -> bool:
    """A dispatcher's claim found the subtask's address on the list: `queued -> suppressed`,
    refunded and counted, unless the list's sweep (or anyone else) moved it first."""
    if not _suppressed_now(subtask, "address suppressed (found at send time)"):
        return False
    _refund_suppressed(subtask.task_id, subtask.user_id, 1, now, {subtask.timezone: 1} if subtask.timezone else None)
    return True


def suppressed_reasons(user_id: str, contact_ids: Sequence[str]) -> dict[str, str]:
    """contact_id -> reason for those of `contact_ids` on the tenant's list (consistent BatchGetItem,
    100 keys a call)."""
    wanted = list(dict.fromkeys(contact_ids))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), BATCH_GET_LIMIT):
        keys = [(user_id, contact_id) for contact_id in wanted[start : start + BATCH_GET_LIMIT]]
        for entry in SuppressionModel.batch_get(
            keys, consistent_read=True, attributes_to_get=["user_id", "contact_id", "reason"]
        ):
            found[entry.contact_id] = entry.reason
    return found


def suppressed_between(user_id: str, first: str, last: str) -> set[str]:
    """The contact ids on the tenant's list from `first` to `last` (inclusive): one consistent Query
    of the list's range (it is sorted by contact id, as contacts are), keys only; the planner's check
    of a page of contacts, whose cost is the entries in its range, not the page's size."""
    if first > last:
        return set()
    return {
        entry.contact_id
        for entry in SuppressionModel.query(
            user_id,
            range_key_condition=SuppressionModel.contact_id.between(first, last),
            consistent_read=True,
            attributes_to_get=["user_id", "contact_id"],
        )
    }


def unsuppress(user_id: str, email: str, now: float, *, force: bool = False) -> bool:
    """Removes the address from the tenant's list; False when it is not on it. An entry of the
    recipient's own word (RECIPIENT_REASONS) needs `force` (RecipientSuppression otherwise). The
    contact goes back to `subscribed` only when its status is the one this entry gave it (a status
    it got otherwise is kept). Subtasks already suppressed stay suppressed; the next plan includes
    the contact again."""
    contact_id = contact_id_for(email)
    try:
        entry = SuppressionModel.get(user_id, contact_id, consistent_read=True)
    except SuppressionModel.DoesNotExist:
        return False
    reason = SuppressionReason(entry.reason)
    if reason in RECIPIENT_REASONS and not force:
        raise RecipientSuppression(
            f"{entry.email} is suppressed because the recipient {reason.value}; "
            "remove it only with their new consent (force=true)",
            [{"field": "force", "reason": f"required to remove a `{reason.value}` suppression"}],
        )
    # Deleted only as read: a reason that became stronger meanwhile is decided again by the caller.
    # (A claim transaction checking the entry at that moment conflicts: delete_if tries again.)
    if not delete_if(entry, SuppressionModel.reason == reason.value):
        return unsuppress(user_id, email, now, force=force)
    update_if(
        ContactModel(user_id, contact_id),
        [ContactModel.status.set(ContactStatus.SUBSCRIBED.value), ContactModel.updated_at.set(now)],
        ContactModel.contact_id.exists() & (ContactModel.status == CONTACT_STATUS_OF_REASON[reason].value),
    )
    return True
