"""Warm-up ramps: a new sending account earns its reputation by sending a little more each day.

A service with a ramp sends at most `allowance(day)` emails on the ramp's day `day` (day 1 is its
`start_day`, a UTC date; nothing before it): a custom table gives each day's allowance, a preset (or
`first_day` and `growth`) gives `first_day * growth ** (day - 1)`, rounded down. The allowance is
applied as the service's *effective daily quota*, `min(daily_quota, allowance)`, wherever the daily
quota is (the block reservation, routing, stats, test sends); after a table's last day, or once the
growth reaches the daily quota, the ramp is over and the daily quota alone applies. Work beyond the
day's allowance waits with the reason `warmup_allowance:<service>` (docs/warmup.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from core.clock import to_datetime
from core.storage.models import EmailServiceModel

# name -> (first day's allowance, daily growth factor)
PRESETS: dict[str, tuple[int, float]] = {
    "standard": (50, 1.5),
    "conservative": (20, 1.3),
    "aggressive": (200, 2.0),
}

WARMUP_ALLOWANCE = "warmup_allowance"  # why work waits when the ramp, not the daily quota, ran out
DAILY_QUOTA_EXHAUSTED = "daily_quota_exhausted"
_UNLIMITED = 1e15  # above any daily quota (the API caps it far lower): the growth has reached it


@dataclass(frozen=True)
class Ramp:
    start_day: date
    first_day: int = 50
    growth: float = 1.5
    schedule: tuple[int, ...] = ()  # a custom table: day 1, day 2, ... (wins over first_day / growth)
    preset: str = "standard"

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Ramp:
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
        """Emails allowed on ramp day `day`; None once the ramp no longer limits (past its table, or
        grown beyond any quota)."""
        if day < 1:
            return 0  # not started: nothing until its first day
        if self.schedule:
            return self.schedule[day - 1] if day <= len(self.schedule) else None
        # In logarithms first: growth ** day overflows a float after a few years of days.
        if self.growth > 1 and math.log(self.first_day) + (day - 1) * math.log(self.growth) >= math.log(_UNLIMITED):
            return None
        return math.floor(self.first_day * self.growth ** (day - 1) + 1e-9)  # 1e-9: 1.5 ** k's rounding

    def at(self, now: float) -> tuple[int, int | None]:
        """The ramp's day at `now` and that day's allowance."""
        day = self.day(now)
        return day, self.allowance(day)


@dataclass(frozen=True)
class DayQuota:
    """What a service may send on one UTC day."""

    daily_quota: int
    ramp: Ramp | None = None
    day: int | None = None  # the ramp's day (None: no ramp)
    allowance: int | None = None  # the ramp's allowance that day (None: no ramp, or the ramp is over)

    @property
    def effective(self) -> int:
        """The effective daily quota: the daily quota, capped by the ramp's allowance."""
        return self.daily_quota if self.allowance is None else min(self.daily_quota, self.allowance)

    @property
    def ramp_limits(self) -> bool:
        """The ramp, not the daily quota, is what caps the day."""
        return self.effective < self.daily_quota

    def exhausted_reason(self, service_id: str) -> str:
        """Why work waits once the day's quota is used up."""
        return f"{WARMUP_ALLOWANCE if self.ramp_limits else DAILY_QUOTA_EXHAUSTED}:{service_id}"


def day_quota(daily_quota: int, warmup: Mapping[str, Any] | None, now: float) -> DayQuota:
    """The quota of the UTC day of `now` for a service with this daily quota and stored ramp."""
    if not warmup:
        return DayQuota(daily_quota)
    ramp = Ramp.from_item(warmup)
    day, allowance = ramp.at(now)
    return DayQuota(daily_quota, ramp, day, allowance)


def effective_daily_quota(daily_quota: int, warmup: Mapping[str, Any] | None, now: float) -> int:
    """The service's quota for the UTC day of `now`: its daily quota, capped by its ramp's allowance."""
    return day_quota(daily_quota, warmup, now).effective


def stored_ramp(service: EmailServiceModel) -> dict[str, Any] | None:
    """The service's `warmup` map as plain data (PynamoDB gives a MapAttribute or a dict)."""
    value = service.warmup
    if value is None:
        return None
    return dict(value.as_dict()) if hasattr(value, "as_dict") else dict(value)


def service_day_quota(service: EmailServiceModel, now: float) -> DayQuota:
    """The service's quota for the UTC day of `now` (see `day_quota`)."""
    return day_quota(int(service.daily_quota), stored_ramp(service), now)
