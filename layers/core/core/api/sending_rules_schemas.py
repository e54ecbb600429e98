"""Request and response shapes of the issue-12 sending rules: recipient-domain limits and warm-up
ramps (services), send windows (tasks). Shared by schemas.py's service and task models."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from core.dispatch.warmup import PRESETS, DayQuota
from core.mail.providers import PROVIDERS, group_of_domain

MAX_DOMAIN_LIMITS = 100
MAX_WARMUP_DAYS = 365
_DOMAIN = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _group_name(value: str) -> str:
    name = value.strip().casefold()
    if name in PROVIDERS:
        return name
    if len(name) > 253 or not re.fullmatch(_DOMAIN, name):
        known = ", ".join(sorted(PROVIDERS))
        raise ValueError(f"{value!r} is neither a mailbox provider ({known}) nor a domain name")
    return group_of_domain(name)  # gmail.com limits the whole gmail group


GroupName = Annotated[str, AfterValidator(_group_name)]


class DomainLimit(_Strict):
    """At most `per_minute` sends in any 60 s and `per_hour` in any hour to the group (either or both)."""

    per_minute: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    per_hour: StrictInt | None = Field(default=None, ge=1, le=100_000_000)

    @model_validator(mode="after")
    def _one_limit(self) -> DomainLimit:
        if self.per_minute is None and self.per_hour is None:
            raise ValueError("give per_minute, per_hour or both")
        return self


DomainLimits = Annotated[dict[GroupName, DomainLimit], Field(max_length=MAX_DOMAIN_LIMITS)]


def stored_domain_limits(limits: dict[str, DomainLimit] | None) -> dict[str, dict[str, int]] | None:
    """As the service item keeps them (None: no limits)."""
    if not limits:
        return None
    return {group: limit.model_dump(exclude_none=True) for group, limit in limits.items()}


class DeferralOut(BaseModel):
    """A group the service slowed down after SES reported provider deferrals (DeliveryDelay)."""

    level: int  # the limit is divided by 2**level
    until: str


WarmupPreset = Literal["standard", "conservative", "aggressive", "custom"]


class WarmupIn(_Strict):
    """A warm-up ramp: `preset` (standard 50 then x1.5 a day, conservative 20 x1.3, aggressive 200
    x2), or `first_day` / `growth` of your own, or `custom` with a `schedule` table (day 1, day 2,
    ...). Day 1 is `start_day` (UTC; default today)."""

    preset: WarmupPreset = "standard"
    first_day: StrictInt | None = Field(default=None, ge=1, le=1_000_000_000)
    growth: StrictFloat | StrictInt | None = Field(default=None, gt=1, le=10)
    schedule: list[Annotated[StrictInt, Field(ge=0, le=1_000_000_000)]] | None = Field(
        default=None, min_length=1, max_length=MAX_WARMUP_DAYS
    )
    start_day: date | None = None

    @model_validator(mode="after")
    def _consistent(self) -> WarmupIn:
        if self.preset == "custom" and self.schedule is None:
            raise ValueError("a custom ramp needs a schedule (each day's allowance)")
        if self.preset != "custom" and self.schedule is not None:
            raise ValueError("schedule is for preset 'custom'")
        if self.preset == "custom" and (self.first_day is not None or self.growth is not None):
            raise ValueError("first_day and growth do not apply to a custom schedule")
        return self

    def stored(self, today: date) -> dict[str, Any]:
        first, growth = PRESETS.get(self.preset, (None, None))
        item: dict[str, Any] = {"preset": self.preset, "start_day": (self.start_day or today).isoformat()}
        if self.schedule is not None:
            item["schedule"] = list(self.schedule)
        else:
            item["first_day"] = self.first_day or first
            item["growth"] = float(self.growth or growth or 1.5)
        return item


class WarmupOut(BaseModel):
    preset: str
    start_day: str
    first_day: int | None = None
    growth: float | None = None
    schedule: list[int] | None = None
    day: int  # the ramp's day today (1 on start_day)
    allowance_today: int | None  # None once the ramp is over
    effective_daily_quota: int  # min(daily_quota, allowance_today)


def warmup_out(quota: DayQuota) -> WarmupOut | None:
    """A service's ramp as the API shows it, on the day `quota` is for (None: no ramp)."""
    ramp = quota.ramp
    if ramp is None or quota.day is None:
        return None
    return WarmupOut(
        preset=ramp.preset,
        start_day=ramp.start_day.isoformat(),
        first_day=None if ramp.schedule else ramp.first_day,
        growth=None if ramp.schedule else ramp.growth,
        schedule=list(ramp.schedule) or None,
        day=quota.day,
        allowance_today=quota.allowance,
        effective_daily_quota=quota.effective,
    )


# ---------------------------------------------------------------- send windows (tasks)

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ClockTime = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


class SendWindowIn(_Strict):
    """Deliver only between `start` and `end` in each recipient's local time (the contact's
    `timezone`, else this `timezone`), never on `quiet_days`. `end` before `start` spans midnight."""

    start: ClockTime
    end: ClockTime
    timezone: str = "UTC"
    quiet_days: list[Weekday] = Field(default_factory=list, max_length=6)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from core.api.schemas import _iana_timezone  # one rule for every time zone field

        return _iana_timezone(value)

    @field_validator("quiet_days")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("each day at most once")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> SendWindowIn:
        if self.start == self.end:
            raise ValueError("start and end must differ (the window would be empty)")
        return self


class SendWindowOut(BaseModel):
    start: str
    end: str
    timezone: str
    quiet_days: list[str]
