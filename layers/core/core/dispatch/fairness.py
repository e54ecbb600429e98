"""Fairness: weighted round robin user -> task -> subtask from a pointer the lease holder saves for
its successor. Its only AWS call reads the users' weights (one BatchGetItem: user_weights, UserWeights).

Users take turns in id order; a user's turn gives it up to `weight` consecutive picks (null = 1),
and a user with nothing ready ends its turn early. Within a turn the user's tasks are served by
priority (`urgent`, `normal`, `bulk`): round robin among the tasks of the most urgent rank that has
something ready, so priority orders a user's own share and never takes from another user. The bound
this gives, and its proof, are in docs/fairness.md."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.dispatch.candidates import BucketKey, Candidates
from core.dispatch.send_windows import SendWindow
from core.states import PRIORITY_RANK, TaskPriority
from core.storage.models import (
    SenderModel,
    TaskModel,
    TemplateModel,
    UserModel,
)


@dataclass
class Pointer:
    """Round-robin position: the user whose turn it is (or was last), the picks still left in that
    turn, and per user the last task served."""

    user: str = ""
    tasks: dict[str, str] = field(default_factory=dict)
    turn_left: int = 0  # picks `user` may still take in its turn; 0: the next pick starts the next turn


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
    found: int = 0  # subtasks a read found ready since the queue was last read from its start
    read_ahead: bool = True  # interleaving may read on for another group (off once a read found none)
    groups_read: set[str] = field(default_factory=set)  # recipient groups its reads found (up to two)
    dry: bool = False  # its queue on this service had nothing ready at the last look
    recheck_at: float = math.inf  # when a retry not due at the read falls due
    reconciled: bool = False  # counters checked against the subtasks in this invocation

    def rescan(self) -> None:
        """Read the queue from its start again (a retry fell due, or work was re-queued)."""
        self.scan_key, self.scan_done, self.scan_idle_until, self.found = None, False, 0.0, 0
        self.read_ahead = True
        self.dry, self.recheck_at, self.reconciled = False, math.inf, False


def priority_rank(task: TaskModel) -> int:
    """Lower is served first within its user's share; a missing or unknown priority is `normal`."""
    try:
        return PRIORITY_RANK[TaskPriority(task.priority or TaskPriority.NORMAL)]
    except ValueError:
        return PRIORITY_RANK[TaskPriority.NORMAL]


def user_weight(weight: float | int | None) -> int:
    """A stored weight as picks per turn (null or below 1 = 1)."""
    return max(1, int(weight or 1))


def user_weights(user_ids: Iterable[str]) -> dict[str, int]:
    """The weights of these users (one BatchGetItem per 100, two attributes each); a user not found
    has weight 1."""
    keys = sorted(set(user_ids))
    if not keys:
        return {}
    return {
        user.user_id: user_weight(user.weight)
        for user in UserModel.batch_get(keys, attributes_to_get=["user_id", "weight"])
    }


class UserWeights:
    """The weights of the users with work, as a dispatcher last read them. Read again after a
    control change (PATCH /api/users announces one), otherwise only for users not seen before: a
    steady invocation reads them once, not at every periodic reload."""

    def __init__(self) -> None:
        self.known: dict[str, int] = {}
        self.control_seq: int | None = None

    def of(self, user_ids: Iterable[str], control_seq: int) -> dict[str, int]:
        wanted = set(user_ids)
        if control_seq != self.control_seq:
            self.known, self.control_seq = {}, control_seq
        missing = wanted - self.known.keys()
        if missing:
            found = user_weights(missing)
            self.known.update({user_id: found.get(user_id, 1) for user_id in missing})
        return {user_id: self.known[user_id] for user_id in wanted}


def _next_after(ordered: list[str], last: str) -> list[str]:
    """`ordered` rotated to start just after `last` (round robin)."""
    later = [item for item in ordered if item > last]
    return later + [item for item in ordered if item <= last]


class Fairness:
    """Users in turn, `weight` picks per turn; a user's most urgent tasks with work in turn."""

    def __init__(self, pointer: Pointer) -> None:
        self.pointer = pointer
        # user -> that user's tasks by rank (most urgent first), each rank's in task id order
        self.by_user: dict[str, list[dict[str, TaskWork]]] = {}
        self.users: list[str] = []  # in id order: the order of turns
        self.weights: dict[str, int] = {}

    def replace_tasks(
        self, works: dict[str, TaskWork], weights: Mapping[str, float | int | None] | None = None
    ) -> None:
        """The tasks to serve now, and their users' weights (a user not in `weights` has weight 1)."""
        ranked: dict[str, dict[int, list[TaskWork]]] = {}
        for work in works.values():
            ranked.setdefault(work.task.user_id, {}).setdefault(priority_rank(work.task), []).append(work)
        self.by_user = {
            user_id: [
                {w.task.task_id: w for w in sorted(ranks[rank], key=lambda w: w.task.task_id)} for rank in sorted(ranks)
            ]
            for user_id, ranks in ranked.items()
        }
        self.users = sorted(self.by_user)
        self.weights = {user_id: user_weight((weights or {}).get(user_id)) for user_id in self.by_user}
        # A weight lowered mid-turn shortens the turn in progress to the new weight.
        current = self.weights.get(self.pointer.user)
        if current is not None:
            self.pointer.turn_left = min(self.pointer.turn_left, current - 1)

    def next_work(self, has_ready: Callable[[TaskWork], bool]) -> TaskWork | None:
        current = self.pointer.user
        tried = ""
        if self.pointer.turn_left > 0 and current in self.by_user:
            work = self._pick_task(current, has_ready)
            if work is not None:
                self.pointer.turn_left -= 1
                return work
            self.pointer.turn_left = 0  # nothing ready: its turn ends early, the next user's begins
            tried = current
        for user_id in _next_after(self.users, current):
            work = self._pick_task(user_id, has_ready) if user_id != tried else None
            if work is not None:
                self.pointer.user = user_id
                self.pointer.turn_left = self.weights[user_id] - 1
                return work
        return None

    def _pick_task(self, user_id: str, has_ready: Callable[[TaskWork], bool]) -> TaskWork | None:
        """The user's next task: round robin within the most urgent rank that has something ready.
        A task that has nothing ready (or nothing eligible now) is passed over and keeps its place."""
        last = self.pointer.tasks.get(user_id, "")
        for rank in self.by_user[user_id]:
            for task_id in _next_after(list(rank), last):
                if has_ready(rank[task_id]):
                    self.pointer.tasks[user_id] = task_id
                    return rank[task_id]
        return None
