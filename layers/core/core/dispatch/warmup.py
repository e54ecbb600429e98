"""Warm-up ramps: a new sending account earns its reputation by sending a little more each day.

A service with a ramp sends at most `allowance(day)` emails on the ramp's day `day` (day 1 is its
`start_day`, a UTC date): a custom table gives each day's allowance, a preset (or `first_day` and
`growth`) gives `first_day * growth ** (day - 1)`, rounded down. The allowance is applied as the
service's *effective daily quota*, `min(daily_quota, allowance)`, wherever the daily quota is
(the block reservation, routing, stats); after a table's last day, or once the growth reaches the
daily quota, the ramp is over and the daily quota alone applies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Any

from core.clock import to_datetime

# name -> (first day's allowance, daily growth factor)
PRESETS: dict[str, tuple[int, float]] = {
    "standard": (50, 1.5),
    "conservative": (20, 1.3),
    "aggressive": (200, 2.0),
}


@dataclass(frozen=True)
class Ramp:
    start_day: date
    first_day: int = 50
    growth: float = 1.5
    schedule: tuple[int, ...] = ()  # a custom table: day 1, day 2, ... (wins over first_day / growth)
    preset: str = "standard"

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Ramp:
        """From a service's stored `warmup` map."""
        preset = str(item.get("preset") or "standard")
        first, growth = PRESETS.get(preset, PRESETS["standard"])
        return cls(
            start_day=date.fromisoformat(str(item["start_day"])),
            first_day=int(item.get("first_day") or first),
            growth=float(item.get("growth") or growth),
            schedule=tuple(int(n) for n in item.get("schedule") or ()),
            preset=preset,
        )

    def day(self, now: float) -> int:
        """The ramp's day at `now` (1 on its start day; 0 or less before it)."""
        return (to_datetime(now).date() - self.start_day).days + 1

    def allowance(self, day: int) -> int | None:
        """Emails allowed on ramp day `day`; None once the ramp no longer limits (past its table)."""
        if day < 1:
            return 0  # not started: nothing until its first day
        if self.schedule:
            return self.schedule[day - 1] if day <= len(self.schedule) else None
        value = self.first_day * self.growth ** (day - 1)
        return None if value >= 1e15 else math.floor(value + 1e-9)


def effective_daily_quota(daily_quota: int, warmup: dict[str, Any] | None, now: float) -> int:
    """The service's quota for the UTC day of `now`: its daily quota, capped by its ramp's allowance."""
    if not warmup:
        return daily_quota
    allowance = Ramp.from_item(warmup).allowance(Ramp.from_item(warmup).day(now))
    return daily_quota if allowance is None else min(daily_quota, allowance)
