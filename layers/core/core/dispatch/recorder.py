"""Outcomes: subtask records written in batches, the task counters and refunds they move, and
completion of a task exactly once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.batch_writes import BATCH_WRITE_LIMIT, put_items
from core.models import (
    TASK_COUNTS,
    SubtaskModel,
    TaskModel,
    UserModel,
    update_if,
)
from core.states import TaskStatus

if TYPE_CHECKING:
    from core.dispatch.claims import Journal
    from core.dispatcher import DispatcherDeps

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


class Recorder:
    """Buffers subtask outcomes and writes them in batches, with the task counters they move."""

    def __init__(self, deps: DispatcherDeps, journal: Journal) -> None:
        self.deps = deps
        self.journal = journal  # a recorded outcome's claim leaves the in-flight journal
        self.items: list[SubtaskModel] = []
        self.tallies: dict[str, TaskTally] = {}
        self.user_of: dict[str, str] = {}
        self.started: set[str] = set()  # tasks already moved to `sending` by this invocation
        self.next_counters = deps.clock.now() + COUNTER_FLUSH_SECONDS
        self.outcomes = 0  # records written since the counters last moved

    def add(self, subtask: SubtaskModel, tally: Callable[[TaskTally], None] | None = None) -> None:
        self.items.append(subtask)
        if tally:
            tally(self.tallies.setdefault(subtask.task_id, TaskTally()))
            self.user_of[subtask.task_id] = subtask.user_id
        if len(self.items) >= RECORD_BATCH:
            self.flush()

    def flush(self, *, move_counters: bool = False) -> None:
        """Writes the buffered records; moves the task counters too when `move_counters` or when
        COUNTER_FLUSH_SECONDS passed since they last moved (one update per task then, however many
        record batches it spans)."""
        items, self.items = self.items, []
        put_items(self.deps.dynamodb, self.deps.subtasks_table, items, self.deps.clock)
        self.journal.settle(items)
        for item in items:
            self.deps.fault("after_record", item)
        now = self.deps.clock.now()
        self.outcomes += len(items)
        if not move_counters and now < self.next_counters and self.outcomes < COUNTER_FLUSH_OUTCOMES:
            return
        self.outcomes = 0
        self.next_counters = now + COUNTER_FLUSH_SECONDS
        tallies, self.tallies = self.tallies, {}
        for task_id, tally in tallies.items():
            if task_id not in self.started:
                mark_sending(task_id)
                self.started.add(task_id)
            done = tally.sent + tally.failed + tally.unknown
            if done:
                cleared = [TaskModel.reason.remove()] if tally.sent else []
                counters = TaskModel(task_id)
                counters.update(  # answers with the new item: completion needs no extra read
                    actions=[
                        *cleared,
                        TASK_COUNTS.queued.add(-done),
                        TASK_COUNTS.sent.add(tally.sent),
                        TASK_COUNTS.failed.add(tally.failed),
                        TASK_COUNTS.unknown.add(tally.unknown),
                        TaskModel.quota_refunded.add(tally.refund),
                        TaskModel.updated_at.set(now),
                    ]
                )
                if int(counters.counts.queued) <= 0:
                    complete_if_done(task_id, now)
            if tally.refund:
                UserModel(self.user_of[task_id]).update(actions=[UserModel.remaining_quota.add(tally.refund)])


def mark_sending(task_id: str) -> None:
    update_if(
        TaskModel(task_id),
        [TaskModel.status.set(TaskStatus.SENDING)],
        TaskModel.status.is_in(TaskStatus.QUEUED, TaskStatus.SCHEDULED),
    )


def complete_if_done(task_id: str, now: float) -> None:
    """Completes the task exactly once: the condition, not a read, decides."""
    update_if(
        TaskModel(task_id),
        [
            TaskModel.status.set(TaskStatus.COMPLETED),
            TaskModel.active_partition.remove(),
            TaskModel.active_sort.remove(),
            TaskModel.updated_at.set(now),
        ],
        TaskModel.status.is_in(TaskStatus.QUEUED, TaskStatus.SENDING, TaskStatus.SCHEDULED) & (TASK_COUNTS.queued <= 0),
    )
