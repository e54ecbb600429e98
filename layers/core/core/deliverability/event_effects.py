"""What one SES event does to the records of its email, exactly once.

The subtask is found by `mail.messageId` on the sparse `by-message` index (one Query). Then the
event's kind (ses_events.EFFECTS) is applied in one write gated by the subtask's `ses_events` set:
`ADD ses_events :kind` with the condition `NOT contains(ses_events, :kind)`, and in the same
TransactWriteItems the task counter it moves (`counts.delivered`, ...) and, for a soft bounce, the
contact's soft-bounce count. A repeat of the event (SNS and SQS deliver at least once) fails the
condition and moves nothing; events of different kinds commute (each is gated on its own kind), so
their order does not matter. A crash before the write leaves nothing; after it, the redelivered
message finds the kind recorded.

Suppression is idempotent by itself (an address already suppressed stays so), so it runs for every
delivery of a permanent bounce, complaint or unsubscribe, also a repeat: a crash between the gated
write and the suppression cannot lose it. Reputation counters are fed only by the write that passed
the gate (at most once: a crash right after it loses that one outcome, never counts it twice)."""

from __future__ import annotations

import time
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


@dataclass(frozen=True)
class EventPorts:
    """The collaborators events feed, passed in by the handler (core.deliverability.event_ports)."""

    suppress: Suppress
    record: Callable[[Sequence[ReputationOutcome], float], None]
    guard: Callable[[Iterable[str], Iterable[str], float], object]


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
    """Applies one parsed event. Raises SubtaskNotFoundYet while its subtask may still be recorded,
    and any DynamoDB failure (the caller reports the message failed; SQS delivers it again)."""
    message_id = event.mail.message_id
    kind = kind_of(event)
    if kind is None:
        return Applied(Result.IGNORED, message_id=message_id)
    subtask = find_subtask(message_id)
    if subtask is None:
        if might_be_ours(event) and receive_count < MATCH_ATTEMPTS:
            raise SubtaskNotFoundYet(message_id)
        return Applied(Result.UNMATCHED, kind, message_id)
    effect = EFFECTS[kind]
    at = occurred_at(event, now)
    counted = _gated_write(subtask, kind, event, at)
    if effect.suppress is not None:
        ports.suppress(subtask.user_id, subtask.email, effect.suppress, now, detail=detail_of(event))
    reputation = None
    if counted and effect.reputation is not None:
        reputation = ReputationOutcome(subtask.user_id, subtask.service_id, effect.reputation, at)
    return Applied(Result.APPLIED if counted else Result.DUPLICATE, kind, message_id, subtask.task_id, reputation)


def _subtask_actions(kind: EventKind, detail: str | None, at: float, event_bounce_type: str | None) -> list[Action]:
    effect = EFFECTS[kind]
    actions: list[Action] = [
        SubtaskModel.ses_events.add({kind.value}),
        getattr(SubtaskModel, effect.timestamp).set(at),
    ]
    strong = kind in _STRONG
    if event_bounce_type is not None:
        # A permanent bounce's type wins over a soft one's, whichever came first.
        value: Any = event_bounce_type if strong else (SubtaskModel.bounce_type | event_bounce_type)
        actions.append(SubtaskModel.bounce_type.set(value))
    if detail:
        actions.append(SubtaskModel.delivery_detail.set(detail if strong else (SubtaskModel.delivery_detail | detail)))
    return actions


def _gated_write(subtask: SubtaskModel, kind: EventKind, event: SesEvent, at: float) -> bool:
    """The subtask change and what it gates, once: False when this kind was applied before."""
    bounce = event.bounce
    return _write(
        subtask,
        kind,
        detail_of(event),
        at,
        bounce_type=bounce.bounce_type if bounce else None,
        bounce_subtype=bounce.bounce_sub_type if bounce else None,
    )


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
    actions = _subtask_actions(kind, detail, at, bounce_type)
    if bounce_subtype:
        strong = kind in _STRONG
        actions.append(
            SubtaskModel.bounce_subtype.set(bounce_subtype if strong else SubtaskModel.bounce_subtype | bounce_subtype)
        )
    gate = SubtaskModel.partition.exists() & ~SubtaskModel.ses_events.contains(kind.value)
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
