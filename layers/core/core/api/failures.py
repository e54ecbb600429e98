"""The failed-recipient ledger of a task and "retry failed only".

Listing: the task's `failed` (or `unknown`) subtasks, shard by shard (`task_id#00` .. `#15`), each
shard in contact-id order: one Query per shard page with a status filter, never a Scan. A cursor is
the shard and the last contact id read, so a page may stop anywhere, mid-shard included. The filter
is applied after DynamoDB reads, so a page also stops after MAX_READS_PER_PAGE Queries and hands
back a cursor (possibly with fewer items than asked): a large task with few failures is listed in
bounded requests.

Retry: `failed` subtasks only go back to `queued` on their own service, in chunks of one
TransactWriteItems each: the subtasks (each under "still failed"), the task's counters (failed -k,
queued +k, quota_refunded -k; for a completed task its move back to `queued`) and the user's quota
(remaining -k under remaining >= k). A crash between chunks leaves counters and subtasks agreeing;
a subtask that moved meanwhile (a concurrent retry) is left out and the chunk retried without it,
so each subtask is queued again, and its quota taken, once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from core.api.auth import Caller
from core.api.ownership import load_task
from core.api.paging import decode_cursor, encode_cursor
from core.api.schemas import (
    FailureOut,
    FailurePage,
    FailureStatus,
    RetryFailedOut,
    TaskCountsOut,
    is_identifier,
)
from core.clock import Clock, backoff, iso
from core.deliverability.holds import pause_if_held, require_not_held
from core.dispatch.claims import _cancellation_codes as cancellation_codes
from core.dispatch.send_windows import window_done_actions
from core.dispatch.wakeups import SQS_MAX_DELAY_SECONDS, WakeQueue, WakeReason
from core.errors import InsufficientQuota, InvalidInput, InvalidState, NotFound, ServiceUnavailable
from core.refunds import rereserve_in
from core.states import DISPATCHABLE, SubtaskStatus, TaskStatus
from core.storage.ids import SUBTASK_SHARDS, queue_key
from core.storage.models import TASK_COUNTS, SubtaskModel, TaskModel, UserModel, transaction_connection
from core.task_transitions import announce, task_move

# ---------------------------------------------------------------- the ledger

MAX_READS_PER_PAGE = 32  # Queries one page may make (each reads up to 1 MB before the filter)
# A cursor's key: the shard, "/", the last contact id read there ("" at the shard's start).
_CURSOR_KEY = r"\d{2}/([A-Za-z0-9_.:@-]{1,128})?"


def _shard_partition(task_id: str, shard: int) -> str:
    return f"{task_id}#{shard:02d}"  # as core.storage.ids.subtask_partition names them


def _position(cursor: str | None) -> tuple[int, str | None]:
    """(shard, last contact id read there) from a cursor; the first page starts at shard 0."""
    key = decode_cursor(cursor, _CURSOR_KEY)
    if key is None:
        return 0, None
    shard, _, after = key.partition("/")
    if int(shard) >= SUBTASK_SHARDS:
        raise InvalidInput("cursor", "not a cursor returned by this list")
    return int(shard), after or None


def _cursor(shard: int, after: str | None) -> str:
    return encode_cursor(f"{shard:02d}/{after or ''}")


def _failure_out(subtask: SubtaskModel) -> FailureOut:
    unknown = subtask.status == SubtaskStatus.UNKNOWN
    return FailureOut(
        contact_id=subtask.contact_id,
        email=subtask.email,
        status="unknown" if unknown else "failed",
        error_class=subtask.error_class,
        message=subtask.error,
        attempts=int(subtask.attempts or 0),
        failed_at=iso(subtask.failed_at) if subtask.failed_at is not None else None,
        may_have_been_sent=unknown,
    )


def _shard_pages(
    task_id: str, shard: int, after: str | None, status: str, **query: Any
) -> Iterator[tuple[list[SubtaskModel], str | None]]:
    """The shard's subtasks in `status` after contact id `after`, a Query page at a time: (the
    page's matching subtasks, the last contact id the page read or None at the shard's end)."""
    pages = SubtaskModel.query(
        _shard_partition(task_id, shard),
        range_key_condition=SubtaskModel.contact_id > after if after else None,
        filter_condition=SubtaskModel.status == status,
        **query,
    ).page_iter
    for page in pages:
        last = page.get("LastEvaluatedKey")
        yield (
            [SubtaskModel.from_raw_data(item) for item in page.get("Items", [])],
            last["contact_id"]["S"] if last else None,
        )


def list_failures(caller: Caller, task_id: str, status: FailureStatus, cursor: str | None, limit: int) -> FailurePage:
    """A page of the task's recipients in `status` (`failed`, or `unknown`: may have been sent), in
    shard order then contact-id order. The owner or an admin; anyone else's task is 404."""
    if not is_identifier(task_id):
        raise NotFound("task", task_id)
    shard, after = _position(cursor)
    task = load_task(caller, task_id)
    found: list[SubtaskModel] = []
    reads = 0
    while shard < SUBTASK_SHARDS:
        for matches, last_read in _shard_pages(task.task_id, shard, after, status):
            reads += 1
            for subtask in matches:
                found.append(subtask)
                if len(found) == limit:  # the next page starts after this one
                    return _failure_page(task_id, status, found, _cursor(shard, subtask.contact_id))
            after = last_read
            if last_read is not None and reads >= MAX_READS_PER_PAGE:
                return _failure_page(task_id, status, found, _cursor(shard, last_read))
        shard, after = shard + 1, None
        if reads >= MAX_READS_PER_PAGE and shard < SUBTASK_SHARDS:
            return _failure_page(task_id, status, found, _cursor(shard, None))
    return _failure_page(task_id, status, found, None)


def _failure_page(task_id: str, status: FailureStatus, found: list[SubtaskModel], cursor: str | None) -> FailurePage:
    return FailurePage(task_id=task_id, status=status, failures=[_failure_out(s) for s in found], cursor=cursor)


# ---------------------------------------------------------------- retry failed only

RETRY_CHUNK = 98  # subtasks per TransactWriteItems (at most 100 items: the task and the user ride along)
_CHUNK_ATTEMPTS = 8
_REFUSED = "ConditionalCheckFailed"
# A task in one of these keeps its status: its recipients queued again are sent as it sends (a
# paused task's once resumed). A completed one moves back to `queued`; the others are refused.
_KEEPS_STATUS = frozenset(
    {TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.SENDING, TaskStatus.WAITING, TaskStatus.PAUSED}
)


@dataclass(frozen=True)
class RetryDeps:
    clock: Clock
    wake: WakeQueue | None = None  # the re-queued recipients' services are woken at once


def _check_retryable(task: TaskModel) -> None:
    if task.status != TaskStatus.COMPLETED and task.status not in _KEEPS_STATUS:
        raise InvalidState(f"a {task.status} task's failed recipients cannot be retried")


def _failed_subtasks(task_id: str) -> list[SubtaskModel]:
    """Keys and service of every `failed` subtask of the task (a consistent Query per shard page)."""
    return [
        subtask
        for shard in range(SUBTASK_SHARDS)
        for matches, _ in _shard_pages(
            task_id,
            shard,
            None,
            SubtaskStatus.FAILED,
            consistent_read=True,
            attributes_to_get=["partition", "contact_id", "service_id", "timezone"],
        )
        for subtask in matches
    ]


def _requeue_actions(subtask: SubtaskModel, task_id: str) -> list[Action]:
    """Back in its service's queue, due now, with its attempts again; `error` / `error_class` stay as
    the last error (a send clears them), `failed_at` goes (it is set again if it fails again)."""
    return [
        SubtaskModel.status.set(SubtaskStatus.QUEUED),
        SubtaskModel.queue_key.set(queue_key(subtask.service_id, task_id)),
        SubtaskModel.attempts.set(0),
        SubtaskModel.next_attempt_at.set(0),
        SubtaskModel.claim_owner.remove(),
        SubtaskModel.failed_at.remove(),
    ]


def _task_update(
    task: TaskModel, chunk: list[SubtaskModel], now: float
) -> tuple[TaskStatus | None, list[Action], Condition]:
    """The task's part of a chunk: counters, and the move back to `queued` for a completed task
    (the target, None when the status stays), under "the status is still what this expects"."""
    # requeue_seq: dispatchers sending the task read its queues again; a drained-task repair that
    # counted before this commit does not overwrite its counters (core.dispatch.repair).
    units = len(chunk)
    back_by_zone = Counter(subtask.timezone for subtask in chunk if subtask.timezone)  # a windowed task's
    counters: list[Action] = [
        TASK_COUNTS.failed.add(-units),
        TASK_COUNTS.queued.add(units),
        TaskModel.requeue_seq.add(1),
        *window_done_actions({zone: -n for zone, n in back_by_zone.items()}),
    ]
    if task.status == TaskStatus.COMPLETED:
        move = task_move(task, TaskStatus.QUEUED, now, sources=[TaskStatus.COMPLETED], actions=counters)
        return move.target, move.actions, move.condition
    return None, [*counters, TaskModel.updated_at.set(now)], TaskModel.status.is_in(*_KEEPS_STATUS)


def _requeue_chunk(task: TaskModel, chunk: list[SubtaskModel], deps: RetryDeps) -> list[SubtaskModel]:
    """One TransactWriteItems: the chunk's subtasks still `failed` back to `queued`, the task's
    counters (and status) and the user's quota. A subtask that moved meanwhile is left out and the
    rest tried again; a task that moved is read again (and refused when it may no longer retry);
    a user without the quota is InsufficientQuota. Returns the subtasks queued again. `task` is kept
    up to date with the status this wrote."""
    pending = list(chunk)
    for attempt in range(_CHUNK_ATTEMPTS):
        if not pending:
            return []
        target, task_actions, task_condition = _task_update(task, pending, deps.clock.now())
        try:
            with TransactWrite(connection=transaction_connection()) as transaction:
                for subtask in pending:
                    transaction.update(
                        subtask,
                        actions=_requeue_actions(subtask, task.task_id),
                        condition=SubtaskModel.status == SubtaskStatus.FAILED,
                    )
                rereserve_in(
                    transaction,
                    task_id=task.task_id,
                    user_id=task.user_id,
                    units=len(pending),
                    task_actions=task_actions,
                    task_condition=task_condition,
                )
        except TransactWriteError as error:
            codes = cancellation_codes(error)  # in request order: the subtasks, the task, the user
            if len(codes) != len(pending) + 2:
                raise
            *subtask_codes, task_code, user_code = codes
            moved = [code == _REFUSED for code in subtask_codes]
            pending = [subtask for subtask, gone in zip(pending, moved, strict=True) if not gone]
            if task_code == _REFUSED:
                task.refresh(consistent_read=True)
                _check_retryable(task)
            elif user_code == _REFUSED and not any(moved):
                raise InsufficientQuota(
                    f"not enough quota left to send {len(pending)} more emails", [{"field": None, "reason": "quota"}]
                ) from error
            if "TransactionConflict" in codes:
                time.sleep(backoff(attempt, base=0.02))
            continue
        if target is not None:
            task.status = target
            announce(target)  # a completed task is back in the dispatchers' index: they reload
        return pending
    raise ServiceUnavailable("the task is busy (concurrent updates); retry shortly")


def retry_failed(caller: Caller, task_id: str, deps: RetryDeps) -> RetryFailedOut:
    """Queues the task's `failed` recipients again (never sent, unknown, suppressed or cancelled
    ones), each on its own service, taking back the quota their failure refunded. A completed task
    goes back to `queued`; scheduled, queued, sending, waiting and paused tasks keep their status;
    planning, cancelled and rejected ones are 409. Not enough quota for all of them: 409 and nothing
    changes. With nothing failed it re-queues 0."""
    if not is_identifier(task_id):
        raise NotFound("task", task_id)
    task = load_task(caller, task_id)
    _check_retryable(task)
    require_not_held(task.user_id)  # the reputation guard holds the tenant: nothing may queue again
    failed = _failed_subtasks(task.task_id)
    if failed:
        try:
            remaining = int(UserModel.get(task.user_id, consistent_read=True).remaining_quota)
        except UserModel.DoesNotExist:
            remaining = 0  # no user record, no quota
        if remaining < len(failed):
            raise InsufficientQuota(
                f"retrying {len(failed)} failed recipients needs {len(failed)} emails of quota; {remaining} remain",
                [{"field": None, "reason": "insufficient_quota"}],
            )
    requeued: list[SubtaskModel] = []
    try:
        for start in range(0, len(failed), RETRY_CHUNK):
            requeued += _requeue_chunk(task, failed[start : start + RETRY_CHUNK], deps)
    except (InsufficientQuota, InvalidState) as error:
        if requeued:  # earlier chunks stay queued (their quota taken): say so
            error.message = f"{error.message} ({len(requeued)} were queued again before this)"
        raise
    finally:
        _wake(task, {subtask.service_id for subtask in requeued}, deps)
    if requeued:  # a hold written meanwhile: its sweep may not have seen the task queued again
        pause_if_held(task, deps.clock.now())
    task.refresh(consistent_read=True)
    counts = task.counts.as_dict() if task.counts else {}
    return RetryFailedOut(
        task_id=task.task_id,
        requeued=len(requeued),
        status=task.status,
        counts=TaskCountsOut(**{key: int(value) for key, value in counts.items()}),
    )


def _wake(task: TaskModel, service_ids: set[str], deps: RetryDeps) -> None:
    """The services of the re-queued recipients start at once when the task may send (a scheduled
    one at its time, when that is within SQS's delay); a paused task's wait for its resume."""
    if deps.wake is None or not service_ids or TaskStatus(task.status) not in DISPATCHABLE:
        return
    now = deps.clock.now()
    delay = max((task.scheduled_at or now) - now, 0.0)
    if delay <= SQS_MAX_DELAY_SECONDS:
        deps.wake.wake(sorted(service_ids), WakeReason.QUEUED, delay_seconds=delay)
