"""Sent counters per minute, for "emails/min over the last 5 minutes" without reading subtasks.

A recorder's counter flush adds what it recorded as sent, bucketed by the minute of each email's
`sent_at`, to one item per (service, minute) and per (task, minute) in the service usage table
(core.storage.models.ServiceUsageModel: `day` holds the minute, YYYY-MM-DDTHH:MM). A rate read is
one BatchGetItem of RATE_WINDOW_MINUTES keys per service or task: its cost depends on how many
services and tasks are asked about, never on how many emails they sent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from core.clock import to_datetime
from core.storage.models import ServiceUsageModel

RATE_WINDOW_MINUTES = 5
MINUTE_COUNTER_TTL_SECONDS = 2 * 86_400
_BATCH_GET_LIMIT = 100


def minute_of(epoch_seconds: float) -> str:
    return to_datetime(epoch_seconds).strftime("%Y-%m-%dT%H:%M")


def task_counter_key(task_id: str) -> str:
    return f"task#{task_id}"


def window(now: float, minutes: int = RATE_WINDOW_MINUTES) -> list[str]:
    """The minutes a rate at `now` covers: the current one and the `minutes - 1` before it."""
    return [minute_of(now - 60 * back) for back in range(minutes)]


def add_sent(counter_key: str, sent_by_minute: Mapping[str, int], now: float) -> None:
    """Adds sends to a service's (its id) or task's (task_counter_key) minute counters."""
    for minute, count in sorted(sent_by_minute.items()):
        if count:
            ServiceUsageModel(counter_key, minute).update(
                actions=[
                    ServiceUsageModel.sent.add(count),
                    ServiceUsageModel.expires_at.set(int(now) + MINUTE_COUNTER_TTL_SECONDS),
                ]
            )


def sent_in_window(counter_keys: Iterable[str], now: float) -> dict[str, int]:
    """Emails sent in the rate window at `now`, by counter key (0 for keys that sent nothing)."""
    minutes = window(now)
    keys = list(dict.fromkeys(counter_keys))
    totals: Counter[str] = Counter(dict.fromkeys(keys, 0))
    wanted = [(key, minute) for key in keys for minute in minutes]
    for start in range(0, len(wanted), _BATCH_GET_LIMIT):
        for item in ServiceUsageModel.batch_get(wanted[start : start + _BATCH_GET_LIMIT]):
            totals[item.service_id] += int(item.sent or 0)
    return dict(totals)


def per_minute(sent: int) -> float:
    """A window's count as emails per minute."""
    return round(sent / RATE_WINDOW_MINUTES, 2)
