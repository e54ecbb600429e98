"""Time as a dependency: logic asks a clock, tests inject one they control."""

from __future__ import annotations

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


def to_datetime(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC)


def iso(epoch_seconds: float) -> str:
    return to_datetime(epoch_seconds).isoformat().replace("+00:00", "Z")


def utc_day(epoch_seconds: float) -> str:
    """The UTC calendar day a per-day counter (service usage) belongs to."""
    return to_datetime(epoch_seconds).strftime("%Y-%m-%d")
