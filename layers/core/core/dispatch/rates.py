"""Sent counters per minute, for "emails/min over the last 5 minutes" without reading subtasks.

A recorder's counter flush adds what it recorded as sent, bucketed by the minute of each email's
`sent_at` (YYYY-MM-DDTHH:MM):
- for a task, inside the task's counter update itself (`sent_minutes.<minute>`, no extra request;
  minutes older than the window that the loaded task showed are removed in the same update);
- for a service, to one item per (service, minute) in the service usage table
  (core.storage.models.ServiceUsageModel: `day` holds the minute), one UpdateItem per minute a flush
  covers.
A task's rate is read from the task item; a service's is one BatchGetItem of RATE_WINDOW_MINUTES keys
per service: the cost depends on how many services and tasks are asked about, never on how many
emails they sent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pynamodb.expressions.update import Action

from core.clock import to_datetime
from core.storage.models import ServiceUsageModel, TaskModel

RATE_WINDOW_MINUTES = 5
MINUTE_COUNTER_TTL_SECONDS = 2 * 86_400
_BATCH_GET_LIMIT = 100


def minute_of(epoch_seconds: float) -> str:
    return to_datetime(epoch_seconds).strftime("%Y-%m-%dT%H:%M")


def window(now: float, minutes: int = RATE_WINDOW_MINUTES) -> list[str]:
    """The minutes a rate at `now` covers: the current one and the `minutes - 1` before it."""
    return [minute_of(now - 60 * back) for back in range(minutes)]


def add_sent(service_id: str, sent_by_minute: Mapping[str, int], now: float) -> None:
    """Adds sends to a service's minute counters."""
    for minute, count in sorted(sent_by_minute.items()):
        if count:
            ServiceUsageModel(service_id, minute).update(
                actions=[
                    ServiceUsageModel.sent.add(count),
                    ServiceUsageModel.expires_at.set(int(now) + MINUTE_COUNTER_TTL_SECONDS),
                ]
            )


def task_minute_actions(sent_by_minute: Mapping[str, int], stale: Iterable[str]) -> list[Action]:
    """The parts of a task's counter update that add its sends per minute and drop old minutes."""
    minutes: Any = TaskModel.sent_minutes  # a raw map: its keys are paths
    actions: list[Action] = []
    for minute, count in sorted(sent_by_minute.items()):
        if count:
            path = minutes[minute]
            actions.append(path.set((path | 0) + count))
    actions += [minutes[minute].remove() for minute in sorted(set(stale) - set(sent_by_minute))]
    return actions


def stale_minutes(task: TaskModel, now: float) -> list[str]:
    """Minutes of the task's counters older than any window from `now` on."""
    oldest = minute_of(now - 60 * (RATE_WINDOW_MINUTES - 1))
    return [minute for minute in (task.sent_minutes.as_dict() if task.sent_minutes else {}) if minute < oldest]


def task_sent_in_window(task: TaskModel, now: float) -> int:
    counts = task.sent_minutes.as_dict() if task.sent_minutes else {}
    return sum(int(counts.get(minute, 0)) for minute in window(now))


def sent_in_window(service_ids: Iterable[str], now: float) -> dict[str, int]:
    """Emails each service sent in the rate window at `now` (0 for one that sent nothing)."""
    minutes = window(now)
    keys = list(dict.fromkeys(service_ids))
    totals: Counter[str] = Counter(dict.fromkeys(keys, 0))
    wanted = [(key, minute) for key in keys for minute in minutes]
    for start in range(0, len(wanted), _BATCH_GET_LIMIT):
        for item in ServiceUsageModel.batch_get(wanted[start : start + _BATCH_GET_LIMIT]):
            totals[item.service_id] += int(item.sent or 0)
    return dict(totals)


def per_minute(sent: int) -> float:
    """A window's count as emails per minute."""
    return round(sent / RATE_WINDOW_MINUTES, 2)
