"""What SES events do to the records of their emails, exactly once.

Each event's subtask is found by `mail.messageId` on the sparse `by-message` index (one Query). Its
kind (ses_events.EFFECTS) is applied in a write gated by the subtask's `ses_events` set: `ADD
ses_events :kind` under the condition `NOT contains(ses_events, :kind)`. The counters it moves ride
in the same TransactWriteItems: the task's (`counts.delivered`, ...) and, for a soft bounce, the
contact's soft-bounce count. The events of a batch that move counters are written per task, one
transaction holding each event's gated subtask update and one task update adding them all up, so
a batch moves a task item once (it is copied into the task indexes at its whole size). A refused
gate cancels the transaction; the reasons name the event, which is a repeat: it is taken out and
the rest written again. A repeat (SNS and SQS deliver at least once) therefore moves nothing;
events of different kinds commute (each is gated on its own kind), so order does not matter; a
crash before the write leaves nothing and after it the redelivered message finds its kind.

Suppression is idempotent by itself (an address already suppressed stays so), so it runs for every
delivery of a permanent bounce, complaint or unsubscribe, a repeat too: a crash between the gated
write and the suppression cannot lose it. Reputation counters are fed only by writes that passed
their gate (at most once: a crash right after the write loses that outcome, never counts it twice)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from core.clock import backoff
from core.deliverability.ses_events import EFFECTS, EventKind, SesEvent, detail_of, kind_of, occurred_at
from core.states import SuppressionReason
from core.storage.models import TASK_COUNTS, ContactModel, SubtaskModel, TaskModel, transaction_connection, update_if

# A transaction that meets another writer of one of its items is cancelled whole; nothing was
# written, so it is tried again (as core.refunds does).
_CONFLICT_ATTEMPTS = 5
# Kinds whose details replace those of an earlier event; the others only fill in what is missing.
_STRONG = frozenset({EventKind.PERMANENT_BOUNCE, EventKind.COMPLAINT, EventKind.REJECT})
# Events in one TransactWriteItems (100 items at most: each event's subtask and contact, one task).
TRANSACTION_EVENTS = 40
# An event whose subtask is not found yet is retried this many receives (the dispatcher writes a
# subtask's message id in a batch, seconds to minutes after SES accepted the email; the index is
# eventually consistent), then dropped.
MATCH_ATTEMPTS = 10


class Suppress(Protocol):
    """core.suppressions.suppress: the address on the tenant's suppression list (idempotent)."""

    def __call__(
        self, user_id: str, email: str, reason: SuppressionReason, now: float, *, detail: str | None = None
    ) -> object: ...


@dataclass(frozen=True)
class ReputationOutcome:
    """One counted event for core.deliverability.reputation (its `Outcome`)."""

    user_id: str
    service_id: str
    kind: str  # sent | delivered | bounced | complained
    at: float


class Defer(Protocol):
    """core.deliverability.deferrals.record_deferral with its policy: a DeliveryDelay tightens the
    recipient's group on the service when its type says the provider is throttling us."""

    def __call__(
        self,
        service_id: str,
        recipient_address: str,
        delay_type: str,
        now: float,
        *,
        reported_at: float,
        subtask_key: tuple[str, str] | None = None,
    ) -> object: ...


@dataclass(frozen=True)
class EventPorts:
    """The collaborators events feed, passed in by the handler (core.deliverability.event_ports)."""

    suppress: Suppress
    record: Callable[[Sequence[ReputationOutcome], float], None]
    guard: Callable[[Iterable[str], Iterable[str], float], object]
    defer: Defer


class Result(StrEnum):
    APPLIED = "applied"  # first time: subtask, counters and the rest changed
    DUPLICATE = "duplicate"  # this kind was already applied to the email: nothing moved
    IGNORED = "ignored"  # a type that changes nothing (Open, Click, a Subscription without unsubscribe)
    UNMATCHED = "unmatched"  # no subtask has this message id (not ours, or given up waiting)


class SubtaskNotFoundYet(RuntimeError):
    """No subtask has the message id yet: the message is retried later (partial batch failure)."""


@dataclass(frozen=True)
class Applied:
    result: Result
    kind: EventKind | None = None
    message_id: str = ""
    task_id: str | None = None
    reputation: ReputationOutcome | None = None


@dataclass
class BatchOutcomes:
    """What a batch of events counted, for the reputation counters and the guard at its end."""

    outcomes: list[ReputationOutcome] = field(default_factory=list)

    def add(self, applied: Applied) -> None:
        if applied.reputation is not None:
            self.outcomes.append(applied.reputation)

    def finish(self, ports: EventPorts, now: float) -> None:
        """Feeds the counters once for the whole batch; then the guard looks at the scopes that got a
        bounce or a complaint (only those can cross a threshold)."""
        if not self.outcomes:
            return
        ports.record(self.outcomes, now)
        bad = [outcome for outcome in self.outcomes if outcome.kind in ("bounced", "complained")]
        if bad:
            ports.guard({o.user_id for o in bad}, {o.service_id for o in bad}, now)


def find_subtask(message_id: str) -> SubtaskModel | None:
    """The subtask SES gave this message id (one Query on `by-message`; its projection carries the
    keys, task, user, service, email and status)."""
    for subtask in SubtaskModel.by_message.query(message_id, limit=1):
        return subtask
    return None


def might_be_ours(event: SesEvent) -> bool:
    """Whether a message id not found yet may still appear: campaign emails carry a `task_id` tag
    (core.dispatch.sender); an event with tags but not that one is someone else's mail (a test send,
    another application on the account). Events without tags (replayed files) get the benefit."""
    return not event.mail.tags or event.mail.tag("task_id") is not None


def apply_event(event: SesEvent, now: float, ports: EventPorts, *, receive_count: int = 1) -> Applied:
    """Applies one parsed event (apply_events with a batch of one): raises what its message fails with."""
    result = apply_events([("event", event, receive_count)], now, ports)["event"]
    if isinstance(result, BaseException):
        raise result
    return result


@dataclass
class _Pending:
    """An event whose subtask was found, on its way to its gated write."""

    key: str
    event: SesEvent
    kind: EventKind
    subtask: SubtaskModel
    at: float
    contact: bool  # its write also moves the contact's soft-bounce count
    counted: bool | None = None  # the gate's answer, once written
    receive_count: int = 1


def apply_events(
    items: Sequence[tuple[str, SesEvent, int]], now: float, ports: EventPorts
) -> dict[str, Applied | BaseException]:
    """Applies a batch of parsed events, each (key, event, receive count); per key its Applied, or
    the exception its message fails with (SubtaskNotFoundYet, a DynamoDB error: SQS delivers it
    again). The events that move a task counter are written per task in one TransactWriteItems
    (their gated subtask updates, their contacts' soft-bounce counts and one task update adding them
    up), so a batch moves each task item once, not once per event."""
    results: dict[str, Applied | BaseException] = {}
    pending: list[_Pending] = []
    for key, event, receive_count in items:
        try:
            found = _find(key, event, receive_count, now)
        except Exception as error:  # this message fails, the others go on
            results[key] = error
            continue
        if isinstance(found, Applied):
            results[key] = found
        else:
            pending.append(found)
    _write_all(pending, results)
    asked: set[tuple[str, str, str]] = set()  # suppressions asked in this batch: once each is enough
    for item in pending:
        if item.key in results:  # its write failed
            continue
        results[item.key] = _after_write(item, now, ports, asked)
    return results


def _find(key: str, event: SesEvent, receive_count: int, now: float) -> Applied | _Pending:
    message_id = event.mail.message_id
    kind = kind_of(event)
    if kind is None:
        return Applied(Result.IGNORED, message_id=message_id)
    subtask = find_subtask(message_id)
    if subtask is None:
        if might_be_ours(event) and receive_count < MATCH_ATTEMPTS:
            raise SubtaskNotFoundYet(message_id)
        return Applied(Result.UNMATCHED, kind, message_id)
    return _Pending(
        key,
        event,
        kind,
        subtask,
        occurred_at(event, now),
        contact=EFFECTS[kind].soft_bounce,
        receive_count=receive_count,
    )


def _after_write(
    item: _Pending, now: float, ports: EventPorts, asked: set[tuple[str, str, str]]
) -> Applied | BaseException:
    """Suppression (every time: idempotent itself), and the reputation outcome of a first time."""
    effect = EFFECTS[item.kind]
    subtask = item.subtask
    request = (subtask.user_id, subtask.email, str(effect.suppress))
    if effect.suppress is not None and request not in asked:
        asked.add(request)
        try:
            ports.suppress(subtask.user_id, subtask.email, effect.suppress, now, detail=detail_of(item.event))
        except Exception as error:  # retried: the redelivery is a repeat, suppression runs again
            return error
    delay = item.event.delivery_delay
    # A provider deferral tightens the group once per email; an SQS redelivery of a repeat asks
    # again, as its first delivery may have failed right after the gate.
    if item.kind is EventKind.DELIVERY_DELAY and delay is not None and (item.counted or item.receive_count > 1):
        try:
            key = (subtask.partition, subtask.contact_id)  # its group may be a provider's by MX
            ports.defer(subtask.service_id, subtask.email, delay.delay_type, now, reported_at=item.at, subtask_key=key)
        except Exception as error:  # retried: the redelivery (receive count > 1) asks again
            return error
    reputation = None
    if item.counted and effect.reputation is not None:
        reputation = ReputationOutcome(subtask.user_id, subtask.service_id, effect.reputation, item.at)
    result = Result.APPLIED if item.counted else Result.DUPLICATE
    return Applied(result, item.kind, item.event.mail.message_id, subtask.task_id, reputation)


def _write_all(pending: list[_Pending], failures: dict[str, Applied | BaseException]) -> None:
    """Every pending event's gated write; sets each one's `counted`, or its failure in `failures`."""
    seen: set[tuple[str, str, EventKind]] = set()
    by_task: dict[str, list[list[_Pending]]] = {}
    for item in pending:
        identity = (item.subtask.partition, item.subtask.contact_id, item.kind)
        if identity in seen:  # the same notification twice in one batch
            item.counted = False
            continue
        seen.add(identity)
        if EFFECTS[item.kind].counter is None and not item.contact:
            try:
                item.counted = _write_one(item)
            except Exception as error:  # only this message fails
                failures[item.key] = error
            continue
        # A transaction holds one operation per item: a subtask with two events in this batch gets
        # its second in another transaction; at most TRANSACTION_EVENTS events in one.
        rounds = by_task.setdefault(item.subtask.task_id, [])
        for group in rounds:
            taken = {(other.subtask.partition, other.subtask.contact_id) for other in group}
            if len(group) < TRANSACTION_EVENTS and (item.subtask.partition, item.subtask.contact_id) not in taken:
                group.append(item)
                break
        else:
            rounds.append([item])
    for task_id, rounds in by_task.items():
        for group in rounds:
            try:
                _write_group(task_id, group)
            except Exception:  # one by one, so only the failing messages fail
                for item in group:
                    try:
                        item.counted = _write_one(item)
                    except Exception as error:
                        failures[item.key] = error


def _write_group(task_id: str, group: list[_Pending]) -> None:
    """One transaction: each event's gated subtask update (and contact update), then the task's
    counters added up. A refused gate takes that event out (a repeat) and the rest is tried again;
    a missing contact or task is left out; a conflict is tried again after a pause."""
    without_contact: set[str] = set()
    task_gone = False
    attempt = 0
    remaining = list(group)
    while remaining:
        operations: list[tuple[_Pending | None, str]] = []  # (event, "subtask" | "contact") or (None, "task")
        counters: Counter[str] = Counter()
        with_task = False
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                for item in remaining:
                    transaction.update(_subtask_key(item), actions=_actions(item), condition=_gate(item.kind))
                    operations.append((item, "subtask"))
                    effect = EFFECTS[item.kind]
                    if item.contact and item.key not in without_contact:
                        transaction.update(
                            ContactModel(item.subtask.user_id, item.subtask.contact_id),
                            actions=[ContactModel.soft_bounces.add(1), ContactModel.last_soft_bounce_at.set(item.at)],
                            condition=ContactModel.contact_id.exists(),
                        )
                        operations.append((item, "contact"))
                    if effect.counter is not None:
                        counters[effect.counter] += 1
                if counters and not task_gone:
                    with_task = True
                    transaction.update(
                        TaskModel(task_id),
                        actions=[getattr(TASK_COUNTS, name).add(n) for name, n in sorted(counters.items())],
                        condition=TaskModel.task_id.exists(),
                    )
                    operations.append((None, "task"))
            for item in remaining:
                item.counted = True
            return
        except TransactWriteError as error:
            codes = [reason.code if reason else None for reason in error.cancellation_reasons]
            refused = [operations[i] for i, code in enumerate(codes) if code == "ConditionalCheckFailed"]
            if not refused:
                attempt += 1
                if "TransactionConflict" not in codes or attempt >= _CONFLICT_ATTEMPTS:
                    raise
                time.sleep(backoff(attempt - 1, base=0.02))
                continue
            for event, what in refused:
                if event is None:
                    task_gone = with_task  # the task item is gone: the subtasks still record their events
                elif what == "contact":
                    without_contact.add(event.key)
                else:
                    event.counted = False  # already applied: a repeat, nothing of it moves
            remaining = [item for item in remaining if item.counted is None]


def _subtask_key(item: _Pending) -> SubtaskModel:
    return SubtaskModel(item.subtask.partition, item.subtask.contact_id)


def _gate(kind: EventKind) -> Any:
    return SubtaskModel.partition.exists() & ~SubtaskModel.ses_events.contains(kind.value)


def _write_one(item: _Pending) -> bool:
    """One event's gated write on its own (a transaction when it moves a counter or a contact)."""
    bounce = item.event.bounce
    return _write(
        item.subtask,
        item.kind,
        detail_of(item.event),
        item.at,
        bounce_type=bounce.bounce_type if bounce else None,
        bounce_subtype=bounce.bounce_sub_type if bounce else None,
    )


def _actions(item: _Pending) -> list[Action]:
    bounce = item.event.bounce
    return _subtask_actions(
        item.kind,
        detail_of(item.event),
        item.at,
        bounce.bounce_type if bounce else None,
        bounce.bounce_sub_type if bounce else None,
    )


def _subtask_actions(
    kind: EventKind, detail: str | None, at: float, bounce_type: str | None, bounce_subtype: str | None
) -> list[Action]:
    """The subtask's change: the kind added to `ses_events`, its time, and SES's details. A strong
    kind's details (permanent bounce, complaint, rejection) replace earlier ones; a weak kind's only
    fill in what is missing, so a permanent bounce's type wins over a soft one's in either order."""
    effect = EFFECTS[kind]
    actions: list[Action] = [
        SubtaskModel.ses_events.add({kind.value}),
        getattr(SubtaskModel, effect.timestamp).set(at),
    ]
    strong = kind in _STRONG
    for attribute, value in (
        (SubtaskModel.bounce_type, bounce_type),
        (SubtaskModel.bounce_subtype, bounce_subtype),
        (SubtaskModel.delivery_detail, detail),
    ):
        if value:
            actions.append(attribute.set(value if strong else (attribute | value)))
    return actions


def _write(
    subtask: SubtaskModel,
    kind: EventKind,
    detail: str | None,
    at: float,
    *,
    bounce_type: str | None,
    bounce_subtype: str | None,
) -> bool:
    effect = EFFECTS[kind]
    actions = _subtask_actions(kind, detail, at, bounce_type, bounce_subtype)
    gate = _gate(kind)
    target = SubtaskModel(subtask.partition, subtask.contact_id)
    with_task = effect.counter is not None
    with_contact = effect.soft_bounce
    if not with_task and not with_contact:
        return update_if(target, actions, gate)
    attempt = 0
    while True:
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.update(target, actions=actions, condition=gate)
                if with_task:
                    transaction.update(
                        TaskModel(subtask.task_id),
                        actions=[getattr(TASK_COUNTS, str(effect.counter)).add(1)],
                        condition=TaskModel.task_id.exists(),
                    )
                if with_contact:
                    transaction.update(
                        ContactModel(subtask.user_id, subtask.contact_id),
                        actions=[ContactModel.soft_bounces.add(1), ContactModel.last_soft_bounce_at.set(at)],
                        condition=ContactModel.contact_id.exists(),
                    )
            return True
        except TransactWriteError as error:
            codes = [reason.code if reason else None for reason in error.cancellation_reasons]
            if codes and codes[0] == "ConditionalCheckFailed":
                return False  # already applied (or the subtask is gone): nothing moved
            if "ConditionalCheckFailed" in codes[1:]:
                # The task or contact is gone: the subtask still records the event, without it.
                position = 1
                if with_task:
                    with_task = codes[position] != "ConditionalCheckFailed"
                    position += 1
                if with_contact:
                    with_contact = codes[position] != "ConditionalCheckFailed"
                if not with_task and not with_contact:
                    return update_if(target, actions, gate)
                continue
            attempt += 1
            if "TransactionConflict" not in codes or attempt >= _CONFLICT_ATTEMPTS:
                raise
        time.sleep(backoff(attempt - 1, base=0.02))
