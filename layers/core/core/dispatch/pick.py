"""The pick: which queued subtask a dispatcher sends next, and when none may go yet.

Work is taken weighted round robin user -> task (core.dispatch.fairness); within a task, from its
queue read so far, kept in buckets by (recipient group, zone) in queue order
(core.dispatch.candidates). A pick is checked at the moment it is planned to be sent (`pick_at`)
against its group's spacing (core.dispatch.domain_throttles) and its recipient's local-time window
(core.dispatch.send_windows): a subtask held back keeps its place and the next allowed one goes, so
the service keeps its pace with other recipients. With interleaving on, a pick prefers another group
than the last pick's.

The queue is read on from where the last read stopped, at most SCAN_PAGES_PER_LOOK pages a look; a
bucket that overflowed is refilled from its last kept subtask, never by reading the queue again
from its start. One Picker per dispatcher invocation; it makes no write but the counter repair of a
queue found empty from its start (core.dispatch.repair)."""

from __future__ import annotations

import math
from typing import Any

from core.clock import Clock
from core.dispatch.candidates import BucketKey, item_key
from core.dispatch.domain_throttles import DomainThrottles
from core.dispatch.fairness import Fairness, Pointer, TaskWork
from core.dispatch.repair import reconcile_if_drained
from core.mail.providers import group_of
from core.storage.ids import queue_key
from core.storage.models import SubtaskModel
from core.task_transitions import complete_if_done

# A task's queue is read at most this many pages per look; a read that keeps nothing (everything held
# back by a domain limit or a send window) is not repeated for this long.
SCAN_PAGES_PER_LOOK = 8
SCAN_IDLE_SECONDS = 1.0
REFILL_PAGES_PER_LOOK = 8


class Picker:
    """The pick state of one invocation: the tasks' work, the fairness pointer, the domain
    throttles, and what was picked (not to be picked again until given back)."""

    def __init__(
        self, service_id: str, clock: Clock, batch_size: int, owner: str, pointer: Pointer, throttles: DomainThrottles
    ) -> None:
        self.service_id = service_id
        self.clock = clock
        self.batch_size = batch_size  # a queue page
        self.owner = owner
        self.fairness = Fairness(pointer)
        self.throttles = throttles
        self.works: dict[str, TaskWork] = {}
        self.taken: set[tuple[str, str]] = set()  # keys picked by this invocation (not to be picked again)
        self.pick_at = 0.0  # the moment the pick being made is planned to be sent at
        self.picked_key: dict[tuple[str, str], BucketKey] = {}  # picked subtask -> its bucket

    def bucket_of(self, work: TaskWork, subtask: SubtaskModel) -> BucketKey:
        """What may hold the subtask back: its recipient's group and, under a send window, zone."""
        group = (subtask.group or group_of(subtask.email)) if self.throttles.active else ""
        return group, (subtask.timezone or "") if work.window is not None else ""

    def allows(self, work: TaskWork, key: BucketKey, at: float) -> bool:
        """Whether a send at `at` to a recipient of bucket `key` keeps its group's limit and window."""
        if self.throttles.earliest(key[0]) > at:
            return False
        return work.window is None or work.window.is_open(key[1] or None, at)

    def choose(self, work: TaskWork) -> bool:
        at = self.pick_at
        avoid = self.throttles.last_group if self.throttles.interleave else None
        work.chosen = work.candidates.choose(lambda key: self.allows(work, key, at), avoid)
        return work.chosen is not None

    def has_ready(self, work: TaskWork) -> bool:
        """Whether the task has a subtask the pick may take at its planned moment (`pick_at`),
        reading more of its queue when what was read is used up or held back (or, interleaving, holds
        only the last pick's group while more of the queue is unread)."""
        if self.choose(work) and not self.repeats_group(work):
            return True
        now = self.clock.now()
        if work.chosen is not None:  # the same group again: read on a page for another first, once
            # what was read runs low; a page that brings none ends that for the task (a one-domain
            # list must not cost a read per pick)
            # Only for a list its reads showed mixed: a one-domain list is read as before.
            ahead = work.read_ahead and len(work.groups_read) > 1 and len(work.candidates) < self.batch_size
            if ahead and not work.scan_done and now >= work.scan_idle_until:
                self.scan(work, now, pages=1)
                self.choose(work)
                work.read_ahead = not self.repeats_group(work)
            return True
        if now >= work.recheck_at:  # a retry not due at the last read is due now: read from the start
            work.rescan()
        at = self.pick_at
        for key, after in list(work.candidates.drained_overflows(lambda key: self.allows(work, key, at))):
            self.refill(work, key, after, now)
        if self.choose(work):
            return True
        if not work.scan_done and now >= work.scan_idle_until:
            self.scan(work, now)
            if self.choose(work):
                work.dry = False
                return True
        if not work.candidates and work.scan_done and not work.candidates.has_overflow():
            work.dry = True  # nothing queued is ready: reads again only once a retry falls due
            # A queue found empty from its start (not one this invocation emptied: its own counters
            # are still buffered) may be a task whose counters a killed flush left short.
            if not work.reconciled and not work.found:
                work.reconciled = True
                if int(work.task.counts.queued or 0) > 0:
                    reconcile_if_drained(work.task, now, self.owner)
                else:  # e.g. its last queued recipient unsubscribed while the task was paused
                    complete_if_done(work.task.task_id, now)
        return False

    def readable(self, work: TaskWork, subtask: SubtaskModel, now: float) -> bool:
        """A subtask read from the queue that a pick may take (once allowed): due, not picked yet (picked
        ones stay `queued` until their batch is claimed, and an index read may lag), not kept already."""
        if float(subtask.next_attempt_at or 0) > now:
            work.recheck_at = min(work.recheck_at, float(subtask.next_attempt_at))
            return False
        return item_key(subtask) not in self.taken and subtask not in work.candidates

    def repeats_group(self, work: TaskWork) -> bool:
        """Whether the chosen pick is of the last pick's group (interleaving found no other)."""
        return self.throttles.interleave and work.chosen is not None and work.chosen[0] == self.throttles.last_group

    def scan(self, work: TaskWork, now: float, pages: int = SCAN_PAGES_PER_LOOK) -> None:
        """Reads on in the task's queue (from where the last read stopped) until a pick may take
        something, the queue ends, or `pages` pages were read."""
        key = queue_key(self.service_id, work.task.task_id)
        for _ in range(pages):
            page = SubtaskModel.queue.query(key, limit=self.batch_size, last_evaluated_key=work.scan_key)
            kept = 0
            for subtask in page:
                if self.readable(work, subtask, now):
                    work.found += 1
                    bucket = self.bucket_of(work, subtask)
                    if len(work.groups_read) < 2:
                        work.groups_read.add(bucket[0])
                    kept += work.candidates.add(subtask, bucket)
            work.scan_key = page.last_evaluated_key
            work.scan_done = work.scan_key is None
            if work.scan_done or self.choose(work):
                return
            if not kept:  # all held back behind full buckets: read on a little later
                work.scan_idle_until = now + SCAN_IDLE_SECONDS
                return

    def refill(self, work: TaskWork, bucket: BucketKey, after: SubtaskModel, now: float) -> None:
        """Refills a drained bucket whose further subtasks were not kept, reading the queue from the
        last one it kept up to where the main read stands (core.dispatch.candidates)."""
        key = queue_key(self.service_id, work.task.task_id)
        # Subtasks up to `position` were read by the main read; after it, that read keeps them.
        position = work.scan_key["contact_id"]["S"] if work.scan_key else (None if work.scan_done else "")
        start: dict[str, Any] | None = {
            "queue_key": {"S": key},
            "contact_id": {"S": after.contact_id},
            "partition": {"S": after.partition},
        }
        work.candidates.begin_refill(bucket)
        last_read = after
        for _ in range(REFILL_PAGES_PER_LOOK):
            page = SubtaskModel.queue.query(key, limit=self.batch_size, last_evaluated_key=start)
            for subtask in page:
                if position is not None and subtask.contact_id > position:
                    work.candidates.end_refill(bucket)
                    return
                last_read = subtask
                if self.bucket_of(work, subtask) != bucket or not self.readable(work, subtask, now):
                    continue
                if not work.candidates.add(subtask, bucket):
                    return  # full again: it remembers its last kept subtask
            start = page.last_evaluated_key
            if start is None:
                work.candidates.end_refill(bucket)
                return
        work.candidates.pause_refill(bucket, last_read)

    def gated_until(self, now: float) -> float:
        """When something read but held back (a group at its limit, a closed window) may next be
        picked, or a read held back may go on; inf when nothing is held back."""
        earliest = math.inf
        for work in self.works.values():
            if not work.scan_done and work.scan_idle_until > now:
                earliest = min(earliest, work.scan_idle_until)
            for group, zone in work.candidates.buckets:
                at = max(now, self.throttles.earliest(group))
                if work.window is not None:
                    at = work.window.next_open(zone or None, at)
                earliest = min(earliest, at)
        return earliest

    def pick(self, size: int, first_slot: float, step: float) -> list[tuple[TaskWork, SubtaskModel]]:
        """Up to `size` subtasks in fair order, the n-th planned to be sent at `first_slot + n * step`:
        each is checked against domain limits and windows at its own planned moment."""
        picks: list[tuple[TaskWork, SubtaskModel]] = []
        while len(picks) < size:
            self.pick_at = first_slot + len(picks) * step
            work = self.fairness.next_work(self.has_ready)
            if work is None or work.chosen is None:
                break
            bucket = work.chosen
            subtask = work.candidates.pop(bucket)
            self.throttles.picked(bucket[0], self.pick_at)
            self.picked_key[item_key(subtask)] = bucket
            self.taken.add(item_key(subtask))
            picks.append((work, subtask))
        return picks

    def unpick(self, work: TaskWork, subtask: SubtaskModel) -> None:
        """A pick not sent after all goes back to the head of its bucket, to be picked again."""
        self.taken.discard(item_key(subtask))
        bucket = self.picked_key.pop(item_key(subtask), None) or self.bucket_of(work, subtask)
        work.candidates.put_back(subtask, bucket)
        work.dry = False
