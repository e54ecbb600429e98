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
reserved count is written even if tags change meanwhile (fewer is refunded at the end).

Cost: each contact is read once when both passes run in one invocation (the write pass takes the
recipients the count pass kept, `RememberedPages`), and again only for pages a later invocation
writes. Contacts and subtasks stay in DynamoDB's wire format (no model per item), a chunk keeps a
few BatchWriteItem requests in flight, and a commit's answer (ALL_NEW) is the task's new state, so
a chunk costs one page read, its BatchWriteItems and one UpdateItem. A subtask depends only on its
task, position and contact (its `created_at` is the reservation's time), so a chunk redone after a
crash rewrites the same items."""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from core.clock import Clock, backoff
from core.deliverability.holds import REPUTATION_HOLD, pause_if_held, user_hold
from core.dispatch.send_windows import zone
from core.dispatch.wakeups import SQS_MAX_DELAY_SECONDS, WakeQueue, WakeReason
from core.errors import DomainError
from core.mail.mx_groups import MxGroups
from core.mail.providers import domain_of
from core.planning.routing import NoServiceAvailable, routing_cycle, service_weights, user_capacities, waiting_reason
from core.refunds import refund_in
from core.states import DISPATCHABLE, ContactStatus, SubtaskStatus, TaskStatus
from core.storage.batch_writes import WireItem, put_wire_items
from core.storage.ids import queue_key, subtask_partition
from core.storage.models import (
    TASK_COUNTS,
    TASK_PLAN,
    ContactModel,
    TaskModel,
    UserModel,
    transaction_connection,
    update_if,
)
from core.suppressions import suppressed_between, suppressed_reasons
from core.task_transitions import announce, move_task, task_move


class PlanOutcome(StrEnum):
    DONE = "done"  # the task left `planning` (queued, scheduled or rejected)
    CONTINUE = "continue"  # out of time; enqueue a continuation
    SKIPPED = "skipped"  # nothing to do here: not planning, or another run holds the lease
    CANCELLED = "cancelled"  # the task was cancelled mid-planning; enqueue its refund sweep


class LeaseLost(DomainError):
    code = "lease_lost"


ContactItem = WireItem  # a contact as DynamoDB returns it; the planner reads no contact model

BATCH_GET_LIMIT = 100  # DynamoDB's BatchGetItem maximum
MAX_READ_ATTEMPTS = 8
_ASSUMED_REPLY_BYTES = 1 << 20  # a reply whose size is not given counts as a full Query page


@dataclass
class PlannerDeps:
    clock: Clock
    dynamodb: Any  # boto3 DynamoDB client: contact pages and BatchWriteItem with our own backoff
    subtasks_table: str
    seconds_left: Callable[[], float]  # time budget left in this invocation
    owner: str  # this run's lease token
    lease_seconds: float
    page_size: int = 2000  # contacts read per chunk (one Query each, well under its 1 MB page)
    write_concurrency: int = 4  # BatchWriteItem requests a chunk keeps in flight at once
    # Recipients the count pass keeps for the write pass of the same invocation, measured as the
    # bytes DynamoDB sent for their pages (held as Python objects they take about 4x that).
    remember_bytes: int = 16 << 20
    # Wakes the task's services once it is queued (core.dispatch.wakeups); None sends nothing.
    wake: WakeQueue | None = None
    # Recipient domains grouped with the provider whose servers receive them (core.mail.mx_groups);
    # None: no MX grouping.
    mx: MxGroups | None = None


# ---------------------------------------------------------------- recipients


@dataclass(frozen=True)
class Audience:
    """Who a task names, from the fields frozen at its creation."""

    created_at: float
    explicit: frozenset[str]
    include: frozenset[str]
    exclude: frozenset[str]
    has_rule: bool

    @classmethod
    def of(cls, task: TaskModel) -> Audience:
        return cls(
            created_at=float(task.created_at),
            explicit=frozenset(task.contact_ids or ()),
            include=frozenset(task.include_tags or ()),
            exclude=frozenset(task.exclude_tags or ()),
            has_rule=bool(task.has_rule),
        )

    def names(self, contact: ContactItem) -> bool:
        """Named by the task (explicit id or included tag), not excluded by tag, and not created
        after the task."""
        created_at = contact.get("created_at", {}).get("N")
        if created_at is None or float(created_at) > self.created_at:
            return False
        tags = {tag["S"] for tag in contact.get("tags", {}).get("L", ())}
        if tags & self.exclude:
            return False
        return contact["contact_id"]["S"] in self.explicit or (self.has_rule and bool(tags & self.include))


def is_deliverable(contact: ContactItem) -> bool:
    return bool(contact.get("status", {}).get("S") == ContactStatus.SUBSCRIBED)


def not_suppressed(task: TaskModel, contacts: list[ContactItem]) -> list[ContactItem]:
    """`contacts` (in contact-id order) without those whose address is on the tenant's suppression
    list: the list wins over a contact's status (an address listed before its contact was created).
    A tag rule's page asks for the list's entries in the page's range (one Query, whatever the page's
    size); explicit ids, spread thin over the range, are looked up by key."""
    if not contacts:
        return contacts
    ids = [contact["contact_id"]["S"] for contact in contacts]
    listed = (
        suppressed_between(task.user_id, ids[0], ids[-1])
        if task.has_rule
        else set(suppressed_reasons(task.user_id, ids))
    )
    return [contact for contact, contact_id in zip(contacts, ids, strict=True) if contact_id not in listed]


@dataclass(frozen=True)
class Page:
    contacts: list[ContactItem]  # in contact-id order
    cursor: str  # the last contact id (or explicit id) this page covers
    exhausted: bool  # nothing after it
    wire_bytes: int = 0  # what DynamoDB sent for it


@dataclass
class RememberedPages:
    """The recipients of the pages the count pass read, kept for the write pass of the same
    invocation, which then writes from them instead of reading each page a second time: a plan
    that fits in one invocation reads every contact once, and writes exactly what it counted.
    Bounded by `budget` bytes; pages beyond it, and pages an earlier invocation counted, are read
    again (and then skip whoever unsubscribed meanwhile).

    The price: a recipient who unsubscribes (or is suppressed) after the count read their page and
    before their subtask is written still gets a queued subtask (the list's sweep found none to
    suppress). It is never sent: the dispatcher's claim checks the suppression list and suppresses
    and refunds it then (core.dispatch.claims)."""

    budget: int
    pages: dict[str, Page] = field(default_factory=dict)  # by the cursor each page starts after
    held: int = 0

    def keep(self, after: str, page: Page) -> None:
        if self.held + page.wire_bytes <= self.budget:
            self.pages[after] = page
            self.held += page.wire_bytes

    def take(self, after: str) -> Page | None:
        page = self.pages.pop(after, None)
        if page is not None:
            self.held -= page.wire_bytes
        return page


def _reply_bytes(reply: dict[str, Any]) -> int:
    length = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("content-length")
    return int(length) if length and str(length).isdigit() else _ASSUMED_REPLY_BYTES


def _candidate_page(task: TaskModel, cursor: str, deps: PlannerDeps) -> Page:
    """The next contacts after `cursor` in contact-id order."""
    if task.has_rule:
        return _query_page(task.user_id, cursor, deps)
    explicit = sorted(set(task.contact_ids or []))
    start = bisect.bisect_right(explicit, cursor) if cursor else 0
    ids = explicit[start : start + deps.page_size]
    contacts, wire_bytes = _get_contacts(task.user_id, ids, deps)
    found = {contact["contact_id"]["S"]: contact for contact in contacts}
    exhausted = start + len(ids) >= len(explicit)
    return Page([found[i] for i in ids if i in found], ids[-1] if ids else cursor, exhausted, wire_bytes)


def _query_page(user_id: str, cursor: str, deps: PlannerDeps) -> Page:
    request: dict[str, Any] = {
        "TableName": ContactModel.Meta.table_name,
        "KeyConditionExpression": "user_id = :user",
        "ExpressionAttributeValues": {":user": {"S": user_id}},
        "Limit": deps.page_size,
        "ConsistentRead": True,
    }
    if cursor:
        # Resume after the cursor with ExclusiveStartKey rather than a `contact_id > cursor` key
        # condition: the same contacts, and the embedded moto server then skips to the cursor
        # instead of sizing every contact of the user on every page.
        request["ExclusiveStartKey"] = {"user_id": {"S": user_id}, "contact_id": {"S": cursor}}
    reply = deps.dynamodb.query(**request)
    contacts: list[ContactItem] = reply["Items"]
    last = reply.get("LastEvaluatedKey")
    if last is None:
        last_id = contacts[-1]["contact_id"]["S"] if contacts else cursor
        return Page(contacts, last_id, exhausted=True, wire_bytes=_reply_bytes(reply))
    # A page may stop short of the limit (DynamoDB's 1 MB page): the next one starts after it.
    return Page(contacts, last["contact_id"]["S"], exhausted=False, wire_bytes=_reply_bytes(reply))


def _get_contacts(user_id: str, contact_ids: Sequence[str], deps: PlannerDeps) -> tuple[list[ContactItem], int]:
    """The contacts among `contact_ids` that exist (BatchGetItem, 100 keys a request), and the
    bytes their replies took."""
    table = ContactModel.Meta.table_name
    found: list[ContactItem] = []
    wire_bytes = 0
    for start in range(0, len(contact_ids), BATCH_GET_LIMIT):
        keys = [
            {"user_id": {"S": user_id}, "contact_id": {"S": i}} for i in contact_ids[start : start + BATCH_GET_LIMIT]
        ]
        request: dict[str, Any] = {table: {"Keys": keys, "ConsistentRead": True}}
        for attempt in range(MAX_READ_ATTEMPTS):
            reply = deps.dynamodb.batch_get_item(RequestItems=request)
            wire_bytes += _reply_bytes(reply)
            found.extend(reply.get("Responses", {}).get(table, []))
            request = reply.get("UnprocessedKeys") or {}
            if not request:
                break
            deps.clock.sleep(backoff(attempt))
        else:
            raise RuntimeError(f"contacts of {user_id} stayed unprocessed in {table}")
    return found, wire_bytes


# ---------------------------------------------------------------- lease


def acquire_lease(task_id: str, deps: PlannerDeps, expected: TaskStatus) -> TaskModel | None:
    now = deps.clock.now()
    task = TaskModel(task_id)
    acquired = update_if(
        task,
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
    # The update answers with the whole item as it now stands (ALL_NEW): no read after it.
    return task if acquired else None


def release_lease(task: TaskModel, deps: PlannerDeps) -> None:
    # False: another run took the lease over; nothing of ours to release.
    update_if(task, [TaskModel.planner_lease_until.set(0)], TaskModel.planner_lease_owner == deps.owner)


def _holding(deps: PlannerDeps) -> Any:
    return (TaskModel.planner_lease_owner == deps.owner) & (TaskModel.status == TaskStatus.PLANNING)


def _commit(task: TaskModel, deps: PlannerDeps, old_cursor: str, actions: list[Any]) -> None:
    """Advances the plan from `old_cursor`; `task` then holds the item as committed (the update's
    ALL_NEW answer), so the next chunk starts without reading it again."""
    if not update_if(task, actions, _holding(deps) & (TASK_PLAN.cursor == old_cursor)):
        raise LeaseLost("planner lease lost or task left planning")


# ---------------------------------------------------------------- phases


def _count_chunk(task: TaskModel, deps: PlannerDeps, audience: Audience, remembered: RememberedPages) -> None:
    """Counts one page; the count pass is complete when the phase has moved on to `reserve`."""
    cursor = task.plan.cursor
    page = _candidate_page(task, cursor, deps)
    named = [contact for contact in page.contacts if audience.names(contact)]
    recipients = not_suppressed(task, [contact for contact in named if is_deliverable(contact)])
    actions = [
        TASK_PLAN.cursor.set("" if page.exhausted else page.cursor),
        TASK_PLAN.counted.add(len(recipients)),
        TASK_COUNTS.suppressed.add(len(named) - len(recipients)),
        TASK_PLAN.chunks.add(1),
        TaskModel.updated_at.set(deps.clock.now()),
    ]
    if page.exhausted:
        actions.append(TASK_PLAN.phase.set("reserve"))
    _commit(task, deps, cursor, actions)
    remembered.keep(cursor, Page(recipients, page.cursor, page.exhausted, page.wire_bytes))


def _reject(task: TaskModel, deps: PlannerDeps, reason: str) -> PlanOutcome:
    rejected = move_task(
        task,
        TaskStatus.REJECTED,
        deps.clock.now(),
        reason=reason,
        actions=[TaskModel.planner_lease_until.set(0)],
        condition=_holding(deps) & TaskModel.quota_reserved.does_not_exist(),
    )
    if not rejected:
        raise LeaseLost("planner lease lost or task left planning")
    return PlanOutcome.DONE


def _reserve(task: TaskModel, deps: PlannerDeps) -> PlanOutcome | None:
    """Reserves the counted quota once. Returns an outcome when planning ends here."""
    needed = int(task.plan.counted)
    if needed == 0:
        return _reject(task, deps, "no_eligible_recipients")
    user = UserModel.get(task.user_id, consistent_read=True)
    now = deps.clock.now()
    try:
        cycle = routing_cycle(service_weights(user_capacities(user, now)))
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
                    TASK_PLAN.reserved_at.set(now),
                    TaskModel.updated_at.set(now),
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


_ZERO = {"N": "0"}


def subtask_items(
    task_id: str,
    user_id: str,
    routing: Sequence[str],
    template_ids: Sequence[str],
    recipients: Iterable[ContactItem],
    first_seq: int,
    planned_at: float,
    window_zone: str | None = None,
    groups: Mapping[str, str] | None = None,
) -> list[WireItem]:
    """The queued subtasks of `recipients` from position `first_seq` on, in SubtaskModel's wire
    format, built straight from the contacts' own wire attributes (no model per item). Each item
    depends only on its task, position and contact, so a chunk written again after a crash writes
    the same items. Under a send window (`window_zone`: the window's default zone) each carries its
    recipient's zone: the contact's, else the default (core.dispatch.send_windows). `groups`: recipient
    domain -> provider group found by MX (core.mail.mx_groups), carried by those recipients' items."""
    created_at = {"N": json.dumps(planned_at)}  # as NumberAttribute encodes it
    queued = {"S": SubtaskStatus.QUEUED.value}
    items = []
    for seq, contact in enumerate(recipients, start=first_seq):
        contact_id = contact["contact_id"]["S"]
        service_id = routing[seq % len(routing)]
        attributes = contact.get("attributes")
        item = {
            "partition": {"S": subtask_partition(task_id, contact_id)},
            "contact_id": {"S": contact_id},
            "task_id": {"S": task_id},
            "user_id": {"S": user_id},
            "seq": {"N": str(seq)},
            "email": contact["email"],
            "attributes": attributes if attributes and "M" in attributes else {"M": {}},
            "template_id": {"S": template_ids[seq % len(template_ids)]},
            "service_id": {"S": service_id},
            "status": queued,
            "queue_key": {"S": queue_key(service_id, task_id)},
            "attempts": _ZERO,
            "next_attempt_at": _ZERO,
            "created_at": created_at,
        }
        name = contact.get("name")
        if name and "S" in name:
            item["name"] = name
        if window_zone is not None:
            item["timezone"] = {"S": recipient_zone(contact, window_zone)}
        group = groups.get(domain_of(contact["email"]["S"])) if groups else None
        if group is not None:
            item["group"] = {"S": group}
        items.append(item)
    return items


def recipient_zone(contact: ContactItem, default: str) -> str:
    """The zone a send window is kept in for this contact: its own when this machine knows it."""
    own = contact.get("timezone", {}).get("S")
    return own if own and zone(own) is not None else default


def _write_chunk(task: TaskModel, deps: PlannerDeps, audience: Audience, remembered: RememberedPages) -> None:
    """Writes one page of subtasks; the write pass is complete when the phase is `finish`."""
    cursor = task.plan.cursor
    page = remembered.take(cursor)
    if page is None:  # read again: whoever unsubscribed or was suppressed meanwhile is left out
        page = _candidate_page(task, cursor, deps)
        recipients = [contact for contact in page.contacts if audience.names(contact) and is_deliverable(contact)]
        recipients = not_suppressed(task, recipients)
    else:  # the count pass's recipients
        recipients = page.contacts
    written = int(task.plan.written)
    room = int(task.quota_reserved or 0) - written
    recipients = recipients[: max(room, 0)]
    # Subtasks carry the reservation's time, not the chunk's: a chunk redone after a crash
    # rewrites its subtasks unchanged.
    planned_at = task.plan.reserved_at if task.plan.reserved_at is not None else deps.clock.now()
    window_zone = str(task.send_window["timezone"] or "UTC") if task.send_window else None
    groups = None
    if deps.mx is not None and recipients:
        domains = {domain_of(contact["email"]["S"]) for contact in recipients}
        groups = deps.mx.groups(domains, max(deps.seconds_left(), 0.0))
    items = subtask_items(
        task.task_id,
        task.user_id,
        list(task.plan.routing),
        list(task.template_ids),
        recipients,
        written,
        planned_at,
        window_zone,
        groups,
    )
    put_wire_items(deps.dynamodb, deps.subtasks_table, items, deps.clock, in_flight=deps.write_concurrency)
    actions = [
        TASK_PLAN.cursor.set(page.cursor),
        TASK_PLAN.written.add(len(recipients)),
        TASK_COUNTS.queued.add(len(recipients)),
        TASK_PLAN.chunks.add(1),
        TaskModel.updated_at.set(deps.clock.now()),
    ]
    if window_zone is not None:  # recipients per zone: what waits for its window (stats)
        zones = Counter(recipient_zone(contact, window_zone) for contact in recipients)
        planned_by_zone: Any = TaskModel.window_planned
        actions += [planned_by_zone[name].set((planned_by_zone[name] | 0) + n) for name, n in sorted(zones.items())]
    if page.exhausted or len(recipients) == room:
        actions.append(TASK_PLAN.phase.set("finish"))
    _commit(task, deps, cursor, actions)


def _finish(task: TaskModel, deps: PlannerDeps) -> PlanOutcome:
    """Leaves `planning`: queued (or scheduled), totals set, unused reservation refunded; paused
    while the tenant's sending is held by the reputation guard (its admin resume resumes it)."""
    now = deps.clock.now()
    written = int(task.plan.written)
    unused = int(task.quota_reserved or 0) - written
    if written == 0:
        status, reason = TaskStatus.REJECTED, "no_eligible_recipients"
    elif user_hold(task.user_id) is not None:
        status, reason = TaskStatus.PAUSED, REPUTATION_HOLD
    elif task.scheduled_at is not None and task.scheduled_at > now:
        status, reason = TaskStatus.SCHEDULED, None
    else:
        status, reason = TaskStatus.QUEUED, _why_waiting(task, now)
        if reason is not None:  # no service it may use can send now: it shows why, and moves on by itself
            status = TaskStatus.WAITING
    move = task_move(
        task,
        status,
        now,
        sources=[TaskStatus.PLANNING],
        reason=reason,
        actions=[TASK_COUNTS.total.set(written), TaskModel.planner_lease_until.set(0), TASK_PLAN.phase.set("done")],
        condition=_holding(deps) & (TASK_PLAN.phase == "finish"),
    )
    try:
        with TransactWrite(connection=transaction_connection()) as transaction:
            # The move and the unused reservation's refund: one task update, so one transaction.
            refund_in(
                transaction,
                task_id=task.task_id,
                user_id=task.user_id,
                units=unused,
                task_actions=move.actions,
                task_condition=move.condition,
            )
    except TransactWriteError as error:
        task.refresh(consistent_read=True)
        if task.planner_lease_owner != deps.owner or task.status != TaskStatus.PLANNING:
            raise LeaseLost("planner lease lost while finishing") from error
        raise
    announce(status)
    # A hold written meanwhile may have swept the tenant's tasks before this one could be seen.
    if status in DISPATCHABLE and pause_if_held(task, now):
        return PlanOutcome.DONE
    if status in (TaskStatus.QUEUED, TaskStatus.SCHEDULED):
        _wake(task, deps, now)
    return PlanOutcome.DONE


def _why_waiting(task: TaskModel, now: float) -> str | None:
    """Why none of the services the task is routed to can send now, or None when one can."""
    routed = set(task.plan.routing or [])
    capacities = user_capacities(UserModel.get(task.user_id, consistent_read=True), now)
    return waiting_reason([capacity for capacity in capacities if capacity.service_id in routed])


def _wake(task: TaskModel, deps: PlannerDeps, now: float) -> None:
    """A task that may send: idle services of its routing are woken now (or, for a task due within
    SQS's 15-minute delay, at its time); sending dispatchers heard of it from `announce`."""
    delay = max(0.0, (task.scheduled_at or now) - now)
    if deps.wake is not None and delay <= SQS_MAX_DELAY_SECONDS:
        deps.wake.wake(task.plan.routing or [], WakeReason.QUEUED if delay == 0 else WakeReason.DUE, delay)


# ---------------------------------------------------------------- entry point


def plan_task(task_id: str, deps: PlannerDeps) -> PlanOutcome:
    """Advances the planning of one task as far as the time budget allows."""
    task = acquire_lease(task_id, deps, TaskStatus.PLANNING)
    if task is None:
        return PlanOutcome.SKIPPED
    audience = Audience.of(task)
    remembered = RememberedPages(deps.remember_bytes)
    try:
        while True:
            phase = task.plan.phase
            if phase == "finish":
                return _finish(task, deps)
            if deps.seconds_left() <= 0:
                release_lease(task, deps)
                return PlanOutcome.CONTINUE
            if phase == "count":
                _count_chunk(task, deps, audience, remembered)
            elif phase == "reserve":
                outcome = _reserve(task, deps)
                if outcome is not None:
                    return outcome
            elif phase == "write":
                _write_chunk(task, deps, audience, remembered)
            else:
                return PlanOutcome.SKIPPED
    except LeaseLost:
        task.refresh(consistent_read=True)
        if task.status == TaskStatus.CANCELLED and task.planner_lease_owner == deps.owner:
            # Hand the task to its refund sweep now rather than when our lease expires.
            release_lease(task, deps)
            return PlanOutcome.CANCELLED
        return PlanOutcome.SKIPPED
