"""Claims: `queued -> sending` for the next sends in one transaction that also journals them on the
service's lease item and checks the controls; and giving unsent claims back.

The in-flight journal (`SchedulerStateModel.inflight`, on the `service#<id>` item) maps a claim
batch (`<owner>#<n>`) to the keys it claimed. It is written in the claim's own transaction, under
the lease (the update is conditional on this invocation still holding it), and a batch is dropped
from it only after every one of its subtasks has been recorded or given back. A successor that
takes over after a crash reads it and marks what is still `sending` `unknown` (core.dispatch.repair),
so finding what may have reached SES costs one item read, not an index kept up by every claim.

The same transaction checks the scheduler item (running, control sequence unchanged), so a claim is
also the look at the controls: at slow paces a dispatcher makes one request per second, not two.
It also checks that no claimed address is on its tenant's suppression list (one ConditionCheck per
address, core.suppressions): a subtask whose address was suppressed after it was planned is never
claimed, even before the list's sweep reaches its task; the caller suppresses and refunds it.
A task's first claim also sets the task's `began_at` in it (core.late_start: a task that began is
never expired). At most CLAIM_BATCH_LIMIT (25) subtasks: 25 updates, 25 checks, at most 25 first
claims, the lease and the control check stay under DynamoDB's 100 items a transaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from core.clock import backoff
from core.dispatch.lease import service_state_key
from core.dispatch.schedules import SCHEDULER_STATE_KEY
from core.refunds import refund_quota
from core.states import DISPATCHABLE, SubtaskStatus, TaskStatus
from core.storage.ids import queue_key
from core.storage.models import (
    TASK_COUNTS,
    SchedulerStateModel,
    SubtaskModel,
    SuppressionModel,
    TaskModel,
    transaction_connection,
    update_if,
)
from core.suppressions import NOT_SUPPRESSED

# Claims are made for about this much sending time ahead, in one transaction. The claim is also the
# look at the controls, so a pause takes effect within this much sending time (claimed emails of a
# paused task go back at the next look). A crash leaves at most that many claimed emails `unknown`.
CLAIM_AHEAD_SECONDS = 1.0
CLAIM_BATCH_LIMIT = 25
CLAIM_ATTEMPTS = 4
_REFUSED = "ConditionalCheckFailed"


class ControlMoved(Exception):
    """The scheduler stopped or a control change was announced since the last look: look again."""


class LeaseLost(Exception):
    """Another invocation holds the service's lease (this one stalled past it): stop."""


class TaskLeft(Exception):
    """A task's first claim found it no longer dispatchable (expired by the late-start guard, paused
    or cancelled, not yet announced): nothing was claimed; reload the tasks."""

    def __init__(self, task_ids: list[str]) -> None:
        super().__init__(", ".join(task_ids))
        self.task_ids = task_ids


def journal_key(subtask: SubtaskModel) -> str:
    return f"{subtask.partition} {subtask.contact_id}"


def parse_journal_key(key: str) -> tuple[str, str]:
    partition, _, contact_id = key.partition(" ")
    return partition, contact_id


def batch_owner(batch_id: str) -> str:
    return batch_id.rpartition("#")[0]


def journal_task_id(key: str) -> str:
    """The task a journal key's subtask belongs to (its partition is `task_id#shard`)."""
    return parse_journal_key(key)[0].rpartition("#")[0]


@dataclass
class Journal:
    """This invocation's view of its in-flight journal: which claimed keys are not recorded yet."""

    service_id: str
    owner: str
    open: dict[str, set[str]] = field(default_factory=dict)  # batch id -> keys not recorded yet
    batch_of: dict[str, str] = field(default_factory=dict)  # key -> its batch id
    settled: set[str] = field(default_factory=set)  # batches fully recorded, still in the item
    count: int = 0
    # The recorder may settle from its writer thread while the loop claims.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def next_batch_id(self) -> str:
        self.count += 1
        return f"{self.owner}#{self.count}"

    def opened(self, batch_id: str, keys: Iterable[str], forget: Iterable[str] = ()) -> None:
        """A batch was claimed (and the settled batches `forget` were removed from the item)."""
        with self.lock:
            self.settled.difference_update(forget)
            self.open[batch_id] = set(keys)
            for key in self.open[batch_id]:
                self.batch_of[key] = batch_id

    def settled_batches(self) -> list[str]:
        with self.lock:
            return sorted(self.settled)

    def settle(self, subtasks: Iterable[SubtaskModel]) -> None:
        """The subtasks' outcome is written (or they went back): their batch may leave the journal."""
        with self.lock:
            self._settle(subtasks)

    def _settle(self, subtasks: Iterable[SubtaskModel]) -> None:
        for subtask in subtasks:
            batch_id = self.batch_of.pop(journal_key(subtask), None)
            if batch_id is None:
                continue
            keys = self.open[batch_id]
            keys.discard(journal_key(subtask))
            if not keys:
                del self.open[batch_id]
                self.settled.add(batch_id)


def _cancellation_codes(error: TransactWriteError) -> list[str]:
    """Why each item of a cancelled transaction failed, in request order ("None": it did not)."""
    return [reason.code if reason else "None" for reason in (error.cancellation_reasons or [])]


def _claim_actions(owner: str) -> list[Action]:
    return [
        SubtaskModel.status.set(SubtaskStatus.SENDING),
        SubtaskModel.claim_owner.set(owner),
        SubtaskModel.queue_key.remove(),
    ]


def _claimed_locally(subtask: SubtaskModel, owner: str) -> None:
    """What the claim wrote, on the object the outcome is later recorded from (a transaction does
    not return the new items)."""
    subtask.status = SubtaskStatus.SENDING
    subtask.claim_owner = owner
    subtask.queue_key = None


def _control_unchanged(control_seq: int) -> Condition:
    seq: Condition = (
        SchedulerStateModel.control_seq.does_not_exist()
        if control_seq == 0
        else SchedulerStateModel.control_seq == control_seq
    )
    running: Condition = SchedulerStateModel.running == True  # noqa: E712 (a condition, not a comparison)
    both: Condition = running & seq
    return both


@dataclass
class Claimed:
    """What one claim did: the journal keys it claimed, and the subtasks it left out because their
    address is on the suppression list (still `queued`: the caller suppresses and refunds them)."""

    keys: set[str] = field(default_factory=set)
    suppressed: list[SubtaskModel] = field(default_factory=list)


def _began(now: float) -> list[Action]:
    return [TaskModel.began_at.set(TaskModel.began_at | now)]  # the first claim's time stays


def claim_subtasks(
    subtasks: list[SubtaskModel],
    journal: Journal,
    now: float,
    control_seq: int,
    first_claims: Iterable[str] = (),
) -> Claimed:
    """`queued -> sending` for each subtask still queued and due whose address is not suppressed,
    journalled under the lease, in one TransactWriteItems that also checks the controls; returns the
    journal keys claimed (and sets on each object what the claim wrote) and the subtasks refused for
    their address. A subtask whose condition fails (a canceller, an unsubscribe moved it first) is
    left out and the rest retried. `first_claims`: tasks not known to have begun; the same
    transaction sets their `began_at` if they are still dispatchable, which the late-start guard's
    expiry is conditional on. Raises ControlMoved, LeaseLost or TaskLeft."""
    first = set(first_claims)
    dispatchable = TaskModel.status.is_in(*DISPATCHABLE)
    pending = list(subtasks)
    suppressed: list[SubtaskModel] = []
    # Still queued on this service: a failover may have moved it to another since it was read.
    condition = (
        (SubtaskModel.status == SubtaskStatus.QUEUED)
        & (SubtaskModel.next_attempt_at <= now)
        & (SubtaskModel.service_id == journal.service_id)
    )
    actions = _claim_actions(journal.owner)
    for attempt in range(CLAIM_ATTEMPTS):
        if not pending:
            return Claimed(suppressed=suppressed)
        batch_id = journal.next_batch_id()
        keys = [journal_key(subtask) for subtask in pending]
        done = journal.settled_batches()
        journalled: list[Action] = [SchedulerStateModel.inflight[batch_id].set(keys)]
        journalled += [SchedulerStateModel.inflight[old].remove() for old in done]
        # One check per address (a transaction names an item once; one address may be queued in
        # several tasks of its tenant).
        addresses = list(dict.fromkeys((subtask.user_id, subtask.contact_id) for subtask in pending))
        beginning = [task_id for task_id in dict.fromkeys(s.task_id for s in pending) if task_id in first]
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                transaction.condition_check(
                    SchedulerStateModel, SCHEDULER_STATE_KEY, condition=_control_unchanged(control_seq)
                )
                for user_id, contact_id in addresses:
                    transaction.condition_check(SuppressionModel, user_id, contact_id, condition=NOT_SUPPRESSED)
                for subtask in pending:
                    transaction.update(subtask, actions=actions, condition=condition)
                for task_id in beginning:
                    transaction.update(TaskModel(task_id), actions=_began(now), condition=dispatchable)
                transaction.update(
                    SchedulerStateModel(service_state_key(journal.service_id)),
                    actions=journalled,
                    condition=SchedulerStateModel.lease_owner == journal.owner,
                )
        except TransactWriteError as error:
            # PynamoDB sends condition checks first (in the order added), then the updates in order.
            codes = _cancellation_codes(error)
            if len(codes) != 1 + len(addresses) + len(pending) + len(beginning) + 1:
                raise
            claims_end = 1 + len(addresses) + len(pending)
            control, checks, claims, tasks, lease = (
                codes[0],
                codes[1 : 1 + len(addresses)],
                codes[1 + len(addresses) : claims_end],
                codes[claims_end:-1],
                codes[-1],
            )
            if control == _REFUSED:
                raise ControlMoved from error
            if lease == _REFUSED:
                raise LeaseLost from error
            left = [task_id for task_id, code in zip(beginning, tasks, strict=True) if code == _REFUSED]
            if left:
                raise TaskLeft(left) from error
            listed = {address for address, code in zip(addresses, checks, strict=True) if code == _REFUSED}
            suppressed += [s for s in pending if (s.user_id, s.contact_id) in listed]
            pending = [
                s
                for s, code in zip(pending, claims, strict=True)
                if code != _REFUSED and (s.user_id, s.contact_id) not in listed
            ]
            if "TransactionConflict" in codes:
                time.sleep(backoff(attempt, base=0.02))
            continue
        journal.opened(batch_id, keys, forget=done)
        for subtask in pending:
            _claimed_locally(subtask, journal.owner)
        return Claimed(set(keys), suppressed)
    return Claimed(suppressed=suppressed)  # kept conflicting: these stay queued for a later pick


def update_all(
    subtasks: list[SubtaskModel], actions_of: Callable[[SubtaskModel], list[Action]], condition: Condition
) -> list[SubtaskModel]:
    """Applies each subtask's actions where `condition` holds, in one TransactWriteItems (at most
    CLAIM_BATCH_LIMIT subtasks); those whose condition fails are left out and the rest retried.
    Returns the updated."""
    pending = list(subtasks)
    for attempt in range(CLAIM_ATTEMPTS):
        if len(pending) <= 1:
            break
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                for subtask in pending:
                    transaction.update(subtask, actions=actions_of(subtask), condition=condition)
        except TransactWriteError as error:
            codes = _cancellation_codes(error)
            if len(codes) != len(pending):
                raise
            pending = [s for s, code in zip(pending, codes, strict=True) if code != _REFUSED]
            if "TransactionConflict" in codes:
                time.sleep(backoff(attempt, base=0.02))
            continue
        return pending
    # One left, or a transaction that kept conflicting: one by one.
    return [subtask for subtask in pending if update_if(subtask, actions_of(subtask), condition)]


def release_claims(subtasks: list[SubtaskModel], journal: Journal, now: float) -> int:
    """Claimed, unsent subtasks back to their queue; cancelled and refunded when their task was
    cancelled meanwhile (the cancel sweep leaves claimed subtasks to their dispatcher). A subtask no
    longer held (a successor recovered it as `unknown` after this invocation's lease expired) is
    left alone. Returns how many were released (their quota units are unused)."""
    released = 0
    held = (SubtaskModel.status == SubtaskStatus.SENDING) & (SubtaskModel.claim_owner == journal.owner)
    by_task: dict[str, list[SubtaskModel]] = {}
    for subtask in subtasks:
        by_task.setdefault(subtask.task_id, []).append(subtask)
    for task_id, claimed in by_task.items():
        task = TaskModel.get(task_id, consistent_read=True)
        if task.status != TaskStatus.CANCELLED:
            released += len(update_all(claimed, _release_actions, held))
            continue
        cancelled = len(update_all(claimed, lambda _: [SubtaskModel.status.set(SubtaskStatus.CANCELLED)], held))
        if cancelled:
            refund_quota(
                task_id=task_id,
                user_id=task.user_id,
                units=cancelled,
                task_actions=[
                    TASK_COUNTS.cancelled.add(cancelled),
                    TASK_COUNTS.queued.add(-cancelled),
                    TaskModel.updated_at.set(now),
                ],
            )
        released += cancelled
    journal.settle(subtasks)  # none of them is in flight for this invocation any more
    return released


def _release_actions(subtask: SubtaskModel) -> list[Action]:
    return [
        SubtaskModel.status.set(SubtaskStatus.QUEUED),
        SubtaskModel.queue_key.set(queue_key(subtask.service_id, subtask.task_id)),
        SubtaskModel.claim_owner.remove(),
    ]
