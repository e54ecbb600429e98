"""Recipient local-time windows: a task may ask that each recipient gets its email only between
`start` and `end` of the recipient's own local time (the contact's `timezone`, copied onto its
subtask at planning, else the window's default zone), never on a quiet day.

A moment is inside the window when, in the recipient's zone, its weekday is not a quiet day and its
time of day is in [start, end) — or, for a window that spans midnight (end < start), at or after
start or before end. Times are whole minutes, and every zone's offset is a whole number of minutes,
so whether a moment is inside depends only on its UTC minute: answers are cached per (zone, minute).
The dispatcher asks at the moment it plans to send (the pick) and again when it sends."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pynamodb.expressions.update import Action

from core.storage.models import TaskModel

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SEARCH_DAYS = 8  # a week and a day: every weekday's opening is among them


@functools.lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    return int(hours) * 60 + int(minutes)


@dataclass
class SendWindow:
    start: int  # minutes after local midnight
    end: int
    default_zone: str = "UTC"
    quiet_days: frozenset[int] = frozenset()  # weekday numbers, Monday 0
    _cache: dict[tuple[str, int], bool] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_item(cls, item: dict[str, Any] | None) -> SendWindow | None:
        """From a task's stored `send_window` map (None: the task has no window)."""
        if not item:
            return None
        return cls(
            start=_minutes(str(item["start"])),
            end=_minutes(str(item["end"])),
            default_zone=str(item.get("timezone") or "UTC"),
            quiet_days=frozenset(WEEKDAYS.index(day) for day in item.get("quiet_days") or []),
        )

    def zone_of(self, name: str | None) -> ZoneInfo:
        """The recipient's zone; the window's default for none or one this machine does not know."""
        return (zone(name) if name else None) or zone(self.default_zone) or ZoneInfo("UTC")

    def _inside_local(self, local: datetime) -> bool:
        if local.weekday() in self.quiet_days:
            return False
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def is_open(self, zone_name: str | None, at: float) -> bool:
        """Whether a send at `at` (epoch seconds) falls inside the recipient's window."""
        key = (zone_name or "", int(at // 60))
        known = self._cache.get(key)
        if known is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            known = self._inside_local(datetime.fromtimestamp(key[1] * 60, self.zone_of(zone_name)))
            self._cache[key] = known
        return known

    def next_open(self, zone_name: str | None, at: float) -> float:
        """The first moment at or after `at` inside the window (at most a week ahead; `at` plus a day
        if every day is quiet, which validation refuses)."""
        if self.is_open(zone_name, at):
            return at
        tz = self.zone_of(zone_name)
        today = datetime.fromtimestamp(at, tz).date()
        openings = []
        for offset in range(_SEARCH_DAYS):
            day = today + timedelta(days=offset)
            for minute in (self.start, 0) if self.end < self.start else (self.start,):
                opening = _local_moment(day, minute, tz)
                if opening > at and self.is_open(zone_name, opening):
                    openings.append(opening)
        return min(openings, default=at + 86_400.0)


def _local_moment(day: date, minute: int, tz: ZoneInfo) -> float:
    """Epoch seconds of `minute` after midnight on `day` in `tz` (in a DST gap: the later reading)."""
    local = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=tz)
    return local.astimezone(UTC).timestamp()


def waiting_for_window(task: Any, now: float) -> int:
    """How many of a windowed task's queued recipients are in a zone whose window is shut at `now`
    (from its per-zone counters: planned minus left the queue; at most its queued count)."""
    window = SendWindow.from_item(task.send_window.as_dict() if task.send_window else None)
    if window is None:
        return 0
    planned = task.window_planned.as_dict() if task.window_planned else {}
    done = task.window_done.as_dict() if task.window_done else {}
    waiting = sum(
        max(0, int(count) - int(done.get(name, 0))) for name, count in planned.items() if not window.is_open(name, now)
    )
    return min(waiting, max(0, int(task.counts.queued or 0)))


def window_done_actions(by_zone: Mapping[str, int]) -> list[Action]:
    """A windowed task's recipients that left its queue (+n: sent, failed, suppressed) or came back
    to it (-n: retry-failed), per zone, on the task item: what waits is planned - done. Only for the
    subtasks of a task with a window (the only ones carrying a `timezone`; its `window_done` map
    exists from its creation)."""
    done: Any = TaskModel.window_done  # a raw map: its keys are paths
    return [done[name].set((done[name] | 0) + n) for name, n in sorted(by_zone.items()) if n]
