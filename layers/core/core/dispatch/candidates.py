"""A task's queued subtasks read so far, in queue order, grouped by what may hold one back.

A subtask's bucket is (recipient group, recipient zone): the group (core.mail.providers) is what
domain limits and interleaving count, the zone what a send window asks. A pick takes, among the
buckets allowed at the planned moment, the head that comes first in queue order (preferring another
group than the last pick's when interleaving): a subtask held back stays where it is, and the rest of
the queue goes ahead of it only while it is held.

Memory is bounded: a bucket keeps at most BUCKET_CAP subtasks. Further subtasks of a full bucket
are not kept (they stay queued in DynamoDB); the bucket remembers the last one it kept, and once it
is drained it is filled again from there (`refill_from`) instead of re-reading the queue from its
start. So a provider held to 60 a minute behind 100,000 queued recipients costs a read of about two
pages each time its bucket empties, not a scan."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from core.storage.models import SubtaskModel

BUCKET_CAP = 100

BucketKey = tuple[str, str]  # (group, zone): zone "" when the task has no send window


@dataclass
class Bucket:
    items: deque[SubtaskModel] = field(default_factory=deque)
    ids: deque[str] = field(default_factory=deque)  # their contact ids (a model attribute read is slow)
    # Subtasks of this bucket queued after this one were not kept: read them from here when drained.
    overflow_after: SubtaskModel | None = None


def item_key(subtask: SubtaskModel) -> tuple[str, str]:
    return subtask.partition, subtask.contact_id


class Candidates:
    def __init__(self) -> None:
        self.buckets: dict[BucketKey, Bucket] = {}
        self.held: set[tuple[str, str]] = set()  # item keys kept here
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def __contains__(self, subtask: SubtaskModel) -> bool:
        return item_key(subtask) in self.held

    def add(self, subtask: SubtaskModel, key: BucketKey) -> bool:
        """Keeps `subtask` at the end of its bucket; False when the bucket is full (not kept)."""
        bucket = self.buckets.setdefault(key, Bucket())
        if bucket.overflow_after is not None or len(bucket.items) >= BUCKET_CAP:
            if bucket.overflow_after is None:
                bucket.overflow_after = bucket.items[-1]
            return False
        bucket.items.append(subtask)
        bucket.ids.append(subtask.contact_id)
        self.held.add(item_key(subtask))
        self.size += 1
        return True

    def choose(self, allowed: Callable[[BucketKey], bool], avoid_group: str | None) -> BucketKey | None:
        """The bucket whose head comes first in queue order among those `allowed`; one of another
        group than `avoid_group` when there is one."""
        best: tuple[str, BucketKey] | None = None
        fallback: tuple[str, BucketKey] | None = None
        for key, bucket in self.buckets.items():
            if not bucket.ids:
                continue
            head = bucket.ids[0]
            if key[0] == avoid_group:
                if (fallback is None or head < fallback[0]) and allowed(key):
                    fallback = (head, key)
            elif (best is None or head < best[0]) and allowed(key):
                best = (head, key)
        chosen = best or fallback
        return chosen[1] if chosen else None

    def pop(self, key: BucketKey) -> SubtaskModel:
        bucket = self.buckets[key]
        subtask = bucket.items.popleft()
        bucket.ids.popleft()
        self.held.discard(item_key(subtask))
        self.size -= 1
        if not bucket.items and bucket.overflow_after is None:
            del self.buckets[key]
        return subtask

    def put_back(self, subtask: SubtaskModel, key: BucketKey) -> None:
        """A pick that was not claimed goes back to the head of its bucket (picks are put back in
        reverse order, so each bucket's order is as before)."""
        bucket = self.buckets.setdefault(key, Bucket())
        bucket.items.appendleft(subtask)
        bucket.ids.appendleft(subtask.contact_id)
        self.held.add(item_key(subtask))
        self.size += 1

    def drained_overflows(self, allowed: Callable[[BucketKey], bool]) -> Iterator[tuple[BucketKey, SubtaskModel]]:
        """Empty buckets with subtasks left in the queue that a pick may take now: (key, where to read from)."""
        for key, bucket in list(self.buckets.items()):
            if not bucket.items and bucket.overflow_after is not None and allowed(key):
                yield key, bucket.overflow_after

    def begin_refill(self, key: BucketKey) -> None:
        """A refill of `key` starts: its subtasks are kept again (up to the cap, as `add` does)."""
        self.buckets[key].overflow_after = None

    def pause_refill(self, key: BucketKey, resume_after: SubtaskModel) -> None:
        """A refill stopped before it caught up: it goes on after `resume_after` (the last subtask it
        read, of any bucket: every subtask of `key` before it is kept)."""
        bucket = self.buckets.get(key)
        if bucket is not None and bucket.overflow_after is None:
            bucket.overflow_after = resume_after

    def end_refill(self, key: BucketKey) -> None:
        """A refill caught up with the queue read (or its end): nothing of `key` is left unkept."""
        bucket = self.buckets.get(key)
        if bucket is not None and not bucket.items and bucket.overflow_after is None:
            del self.buckets[key]

    def has_overflow(self) -> bool:
        return any(bucket.overflow_after is not None for bucket in self.buckets.values())

    def keys(self) -> list[BucketKey]:
        return [key for key, bucket in self.buckets.items() if bucket.items]
