"""Fairness: users in turn, one email per user per round, a user's tasks in turn, from a
round-robin pointer the lease holder saves for its successor. No AWS calls."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.dispatch.candidates import BucketKey, Candidates
from core.dispatch.send_windows import SendWindow
from core.storage.models import (
    SenderModel,
    TaskModel,
    TemplateModel,
)


@dataclass
class Pointer:
    """Round-robin position: the last user served, and per user the last task served."""

    user: str = ""
    tasks: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskWork:
    task: TaskModel
    template: dict[str, TemplateModel]
    sender: SenderModel
    # Its queued subtasks read so far, by (recipient group, zone) (core.dispatch.candidates).
    candidates: Candidates = field(default_factory=Candidates)
    window: SendWindow | None = None  # its recipients' local-time window (core.dispatch.send_windows)
    chosen: BucketKey | None = None  # the bucket the last has_ready found a pick in
    scan_key: dict[str, Any] | None = None  # where the queue read goes on (None: from its start)
    scan_done: bool = False  # the read reached the queue's end
    scan_idle_until: float = 0.0  # a read that kept nothing: no read before this (everything held back)
    dry: bool = False  # its queue on this service had nothing ready at the last look
    recheck_at: float = math.inf  # when a retry not due at the read falls due
    reconciled: bool = False  # counters checked against the subtasks in this invocation

    def rescan(self) -> None:
        """Read the queue from its start again (a retry fell due, or work was re-queued)."""
        self.scan_key, self.scan_done, self.scan_idle_until = None, False, 0.0
        self.dry, self.recheck_at, self.reconciled = False, math.inf, False


def _next_after(ordered: list[str], last: str) -> list[str]:
    """`ordered` rotated to start just after `last` (round robin)."""
    later = [item for item in ordered if item > last]
    return later + [item for item in ordered if item <= last]


class Fairness:
    """Users in turn, one email per user per round; a user's tasks in turn."""

    def __init__(self, pointer: Pointer) -> None:
        self.pointer = pointer
        self.by_user: dict[str, dict[str, TaskWork]] = {}

    def replace_tasks(self, works: dict[str, TaskWork]) -> None:
        by_user: dict[str, dict[str, TaskWork]] = {}
        for work in works.values():
            by_user.setdefault(work.task.user_id, {})[work.task.task_id] = work
        self.by_user = by_user

    def next_work(self, has_ready: Callable[[TaskWork], bool]) -> TaskWork | None:
        for user_id in _next_after(sorted(self.by_user), self.pointer.user):
            tasks = self.by_user[user_id]
            for task_id in _next_after(sorted(tasks), self.pointer.tasks.get(user_id, "")):
                if has_ready(tasks[task_id]):
                    self.pointer.user = user_id
                    self.pointer.tasks[user_id] = task_id
                    return tasks[task_id]
        return None
