"""Outcomes: subtask records written in batches, the task counters and refunds they move, and
completion of a task exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pynamodb.expressions.update import Action

from core.dispatch import rates
from core.dispatch.send_windows import window_done_actions
from core.refunds import refund_quota
from core.states import SubtaskStatus, TaskStatus
from core.storage.batch_writes import BATCH_WRITE_LIMIT, put_items
from core.storage.models import TASK_COUNTS, SubtaskModel, TaskModel, update_if
from core.task_transitions import complete_if_done, task_move

if TYPE_CHECKING:
    from core.dispatch.claims import Journal
    from core.dispatch.dispatcher import DispatcherDeps

RECORD_BATCH = BATCH_WRITE_LIMIT  # outcomes buffered per flush: one BatchWriteItem
# Task counters move once this many outcomes are buffered or this long after they last moved (and at
# the end of an invocation): with many tasks sending at once, one update per task per record batch
# was most of the writes, and on a slow service one per task every few seconds was one per email.
COUNTER_FLUSH_OUTCOMES = 100
COUNTER_FLUSH_SECONDS = 30.0


@dataclass
class TaskTally:
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    refund: int = 0
    started: bool = False
    sent_by_minute: Counter[str] = field(default_factory=Counter)  # core.dispatch.rates
    done_by_zone: Counter[str] = field(default_factory=Counter)  # send windows: left the queue, per zone


class Recorder:
    """Buffers subtask outcomes and writes them in batches, with the task counters they move."""

    def __init__(self, deps: DispatcherDeps, journal: Journal, *, background: bool = False) -> None:
        self.deps = deps
        # `background`: batches are written on one writer thread, in order, while the loop sends on
        # (a 25-item write would otherwise hold up a fast pace); the loop waits for the previous
        # batch only when it hands over the next, and learns of its failure then.
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder") if background else None
        self.pending: Future[None] | None = None
        self.journal = journal  # a recorded outcome's claim leaves the in-flight journal
        self.items: list[SubtaskModel] = []
        self.tallies: dict[str, TaskTally] = {}
        self.user_of: dict[str, str] = {}
        self.started: set[str] = set()  # tasks already moved to `sending` by this invocation
        # Each task's queued count as last seen (loaded, or answered by a counter update): when an
        # update's outcomes match it, the update tries to complete the task in the same request.
        self.queued_left: dict[str, int] = {}
        self.stale_minutes: dict[str, list[str]] = {}
        self.next_counters = deps.clock.now() + COUNTER_FLUSH_SECONDS
        self.outcomes = 0  # records written since the counters last moved

    def loaded(self, tasks: list[TaskModel], new: list[str]) -> None:
        """What the loop's (re)load saw of the tasks it sends for: one already `sending` needs no
        move there with its first counters (one request less), one back after a pause (`new`) does;
        its queued count lets the update with its last outcomes complete it too."""
        self.started.difference_update(new)
        now = self.deps.clock.now()
        for task in tasks:
            # Its per-minute counters older than the rate window go with its next counter update.
            self.stale_minutes[task.task_id] = rates.stale_minutes(task, now)
            if task.status == TaskStatus.SENDING:
                self.started.add(task.task_id)
            self.queued_left.setdefault(task.task_id, int(task.counts.queued or 0))

    def add(self, subtask: SubtaskModel, tally: Callable[[TaskTally], None] | None = None) -> None:
        self.items.append(subtask)
        if tally:
            task_tally = self.tallies.setdefault(subtask.task_id, TaskTally())
            tally(task_tally)
            if subtask.status == SubtaskStatus.SENT and subtask.sent_at is not None:
                task_tally.sent_by_minute[rates.minute_of(float(subtask.sent_at))] += 1
            if subtask.timezone:  # only a windowed task's subtasks carry a zone
                task_tally.done_by_zone[subtask.timezone] += 1
            self.user_of[subtask.task_id] = subtask.user_id
        if len(self.items) >= RECORD_BATCH:
            self.flush()

    def flush(self, *, move_counters: bool = False) -> None:
        """Writes the buffered records; moves the task counters too when `move_counters` or when
        COUNTER_FLUSH_SECONDS passed since they last moved (one update per task then, however many
        record batches it spans). A failure of the previous background batch is raised here, after
        this batch is written."""
        failed = self._wait()
        items, self.items = self.items, []
        now = self.deps.clock.now()
        self.outcomes += len(items)
        tallies: dict[str, TaskTally] | None = None
        if move_counters or now >= self.next_counters or self.outcomes >= COUNTER_FLUSH_OUTCOMES:
            self.outcomes = 0
            self.next_counters = now + COUNTER_FLUSH_SECONDS
            tallies, self.tallies = self.tallies, {}
        if self.writer is None or move_counters or failed is not None:
            self._write(items, tallies)
        else:
            self.pending = self.writer.submit(self._write, items, tallies)
        if failed is not None:
            raise failed

    def close(self) -> BaseException | None:
        """Waits for the writer; returns what its last batch raised, if anything."""
        failed = self._wait()
        if self.writer is not None:
            self.writer.shutdown(wait=True)
            self.writer = None
        return failed

    def _wait(self) -> BaseException | None:
        pending, self.pending = self.pending, None
        return pending.exception() if pending is not None else None

    def _write(self, items: list[SubtaskModel], tallies: dict[str, TaskTally] | None) -> None:
        put_items(self.deps.dynamodb, self.deps.subtasks_table, items, self.deps.clock)
        self.journal.settle(items)
        for item in items:
            self.deps.fault("after_record", item)
        if tallies is None:
            return
        now = self.deps.clock.now()
        service_sent: Counter[str] = Counter()
        for task_id, tally in tallies.items():
            self._move_counters(task_id, tally, now)
            service_sent.update(tally.sent_by_minute)
        rates.add_sent(self.journal.service_id, service_sent, now)

    def _move_counters(self, task_id: str, tally: TaskTally, now: float) -> None:
        """One update per task: its counters, with its move to `sending` the first time this
        invocation records for it, or to `completed` when these outcomes look like its last (each
        under its own condition; a refused one falls back to the counters alone)."""
        task = TaskModel(task_id, user_id=self.user_of[task_id])
        done = tally.sent + tally.failed + tally.unknown
        counters: list[Action] = [
            *([TaskModel.reason.remove()] if tally.sent else []),  # a waiting reason no longer holds
            TASK_COUNTS.queued.add(-done),
            TASK_COUNTS.sent.add(tally.sent),
            TASK_COUNTS.failed.add(tally.failed),
            TASK_COUNTS.unknown.add(tally.unknown),
            *rates.task_minute_actions(tally.sent_by_minute, self.stale_minutes.pop(task_id, ())),
            *window_done_actions(tally.done_by_zone),
        ]
        moved = False
        if done and self.queued_left.get(task_id) == done:  # the condition, not this guess, decides
            move = task_move(task, TaskStatus.COMPLETED, now, actions=counters, condition=TASK_COUNTS.queued == done)
            moved = update_if(task, move.actions, move.condition)
        if not moved and task_id not in self.started:
            self.started.add(task_id)
            # The move sets `reason` itself only when asked: clearing it stays with the counters.
            move = task_move(task, TaskStatus.SENDING, now, actions=counters)
            moved = update_if(task, move.actions, move.condition)  # answers with the new item
        if not moved:  # already sending, or paused/cancelled meanwhile: the counters alone
            task.update(actions=[*counters, TaskModel.updated_at.set(now)])
        self.queued_left[task_id] = int(task.counts.queued)
        if done and task.status != TaskStatus.COMPLETED and int(task.counts.queued) <= 0:
            complete_if_done(task_id, now)
        if tally.refund:  # never sent: the user's quota comes back
            refund_quota(task_id=task_id, user_id=self.user_of[task_id], units=tally.refund)
