"""Time as a dependency: logic asks a clock, tests inject one they control."""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch, UTC."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


def backoff(attempt: int, base: float = 0.05, cap: float = 2.0) -> float:
    """Seconds to wait before retry `attempt` (0-based): exponential from `base`, at most `cap`,
    jittered to between half and all of it so that writers refused together do not retry together."""
    return min(cap, base * 2.0**attempt) * (0.5 + random.random() / 2)


def to_datetime(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC)


# The range a datetime can show; a stored number outside it is shown at the nearest end.
_EARLIEST = datetime.min.replace(tzinfo=UTC).timestamp()
_LATEST = datetime.max.replace(tzinfo=UTC, microsecond=0).timestamp()


def iso(epoch_seconds: float) -> str:
    """ISO 8601 in UTC. Total: whatever number an item holds (even one written before the API
    bounded its timestamps), a read route can show it instead of failing."""
    seconds = float(epoch_seconds)
    if math.isnan(seconds):
        seconds = 0.0
    seconds = min(max(seconds, _EARLIEST), _LATEST)
    return to_datetime(seconds).isoformat().replace("+00:00", "Z")


def utc_day(epoch_seconds: float) -> str:
    """The UTC calendar day a per-day counter (service usage) belongs to."""
    return to_datetime(epoch_seconds).strftime("%Y-%m-%d")
