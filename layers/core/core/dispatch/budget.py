"""The send budget of one service: its pace and its daily quota, owned in one place.

Pace: at least `interval` seconds between two sends, counted from the last send (kept across
invocations through the lease's `last_send_at`), and a pause after SES throttled us. Quota: units of
the service's daily quota are reserved in blocks (core.dispatch.service_quota, a conditional ADD) before the
claims they cover; a unit comes back when its email is not sent, and whatever is left of the block
goes back at the end, to the UTC day it was reserved on. Nothing else touches these counters."""

from __future__ import annotations

import math
from collections.abc import Callable

from core.clock import Clock, utc_day

THROTTLE_BACKOFF_SECONDS = 1.0

Reserve = Callable[[int, float], int]  # (units wanted, now) -> units got (0: the day's quota is spent)
Release = Callable[[int, float], None]  # (units, when they were reserved) -> None


class SendBudget:
    def __init__(
        self, clock: Clock, interval: float, last_send_at: float | None, reserve: Reserve, release: Release
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.last_send_at = last_send_at
        self.cycle = 0.0  # seconds from one send to the next as achieved (EWMA): sizes the claims
        self._reserve = reserve
        self._release = release
        self._backoff_until = 0.0
        self._units = 0  # reserved and not yet spent
        self._reserved_at = 0.0

    # ---------------------------------------------------------------- pace

    def next_slot(self, now: float) -> float:
        """When the service may send again (its pace, and a throttling back-off)."""
        next_slot = self.last_send_at + self.interval if self.last_send_at is not None else now
        return max(self._backoff_until, next_slot)

    def wait(self, deadline: float) -> bool:
        """Sleeps until the service may send again; False when that is past the deadline."""
        now = self.clock.now()
        earliest = self.next_slot(now)
        if earliest >= deadline:
            return False
        while now < earliest:  # a sleep may end a hair early on the wall clock
            self.clock.sleep(earliest - now)
            now = self.clock.now()
        return True

    def sent(self, now: float) -> None:
        """A send left at `now` (the paced instant)."""
        if self.last_send_at is not None and 0 < now - self.last_send_at < 60:
            self.cycle = 0.8 * self.cycle + 0.2 * (now - self.last_send_at)
        self.last_send_at = now

    def throttled(self, now: float) -> None:
        self._backoff_until = now + THROTTLE_BACKOFF_SECONDS

    def sends_before(self, deadline: float, now: float) -> int:
        """How many sends fit before the deadline at the pace achieved (at least one)."""
        interval = max(self.interval, self.cycle, 0.001)
        return max(1, math.ceil((deadline - now) / interval))

    # ---------------------------------------------------------------- quota

    def take(self, now: float, wanted: int) -> bool:
        """One unit of today's quota, reserving a block of up to `wanted` when none is left; False
        when the day's quota is spent."""
        if self._units == 0:
            if utc_day(self._reserved_at) != utc_day(now):
                self._reserved_at = now
            got = self._reserve(max(1, wanted), now)
            if got == 0:
                return False
            self._units = got
            self._reserved_at = now
        self._units -= 1
        return True

    def give_back(self, units: int = 1) -> None:
        """Units taken for emails that were not sent."""
        self._units += units

    def quota_spent(self) -> None:
        """SES says the account's own daily quota is spent: the block is kept, not handed back."""
        self._units = 0

    def close(self) -> None:
        """Hands back what is left of the block, to the day it was reserved on."""
        self._release(self._units, self._reserved_at)
        self._units = 0
