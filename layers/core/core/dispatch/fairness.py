"""Fairness: users in turn, one email per user per round, a user's tasks in turn, from a
round-robin pointer the lease holder saves for its successor. No AWS calls."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from core.storage.models import (
    SenderModel,
    SubtaskModel,
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
    candidates: deque[SubtaskModel] = field(default_factory=deque)
    dry: bool = False  # its queue on this service had nothing ready at the last look
    recheck_at: float = math.inf  # when a dry queue may have something ready (its earliest retry)
    read_to_end: bool = False  # the last read reached the queue's end: emptied candidates mean dry
    reconciled: bool = False  # counters checked against the subtasks in this invocation


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
