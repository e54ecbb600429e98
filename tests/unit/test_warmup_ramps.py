"""Warm-up ramp rules without AWS: each day's allowance, applied as the effective daily quota."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from core.api.sending_rules_schemas import WarmupIn, warmup_out
from core.dispatch.warmup import PRESETS, Ramp, day_quota, effective_daily_quota

START = date(2026, 11, 30)
BIG_QUOTA = 1_000_000


def _noon(day: int) -> float:
    """12:00 UTC of the ramp's day `day` (1 = START)."""
    moment = datetime(START.year, START.month, START.day, 12, tzinfo=UTC) + timedelta(days=day - 1)
    return moment.timestamp()


def _stored(**fields: object) -> dict[str, object]:
    return WarmupIn.model_validate({"start_day": START.isoformat(), **fields}).stored(START)


@pytest.mark.parametrize(
    ("preset", "first_week"),
    [
        ("standard", [50, 75, 112, 168, 253, 379, 569]),  # 50 x 1.5 a day, rounded down
        ("conservative", [20, 26, 33, 43, 57, 74, 96]),  # 20 x 1.3
        ("aggressive", [200, 400, 800, 1600, 3200, 6400, 12800]),  # 200 x 2
    ],
)
def test_each_preset_gives_its_first_week(preset: str, first_week: list[int]) -> None:
    warmup = _stored(preset=preset)
    assert (warmup["first_day"], warmup["growth"]) == PRESETS[preset]
    assert [effective_daily_quota(BIG_QUOTA, warmup, _noon(day)) for day in range(1, 8)] == first_week


def test_first_day_and_growth_of_ones_own_round_down() -> None:
    warmup = _stored(first_day=10, growth=1.25)
    # 10, 12.5, 15.625, 19.53, 24.41, 30.5
    assert [effective_daily_quota(BIG_QUOTA, warmup, _noon(day)) for day in range(1, 7)] == [10, 12, 15, 19, 24, 30]


def test_a_custom_table_gives_each_day_then_the_daily_quota_alone() -> None:
    warmup = _stored(preset="custom", schedule=[100, 0, 300])
    quotas = [day_quota(1000, warmup, _noon(day)) for day in range(1, 6)]
    assert [quota.effective for quota in quotas] == [100, 0, 300, 1000, 1000]
    assert [quota.allowance for quota in quotas] == [100, 0, 300, None, None]
    assert [quota.ramp_limits for quota in quotas] == [True, True, True, False, False]


def test_nothing_is_allowed_before_the_ramp_starts() -> None:
    warmup = _stored(preset="standard")
    before = day_quota(1000, warmup, _noon(0))
    assert (before.day, before.allowance, before.effective, before.ramp_limits) == (0, 0, 0, True)
    assert before.exhausted_reason("svc") == "warmup_allowance:svc"


def test_the_daily_quota_caps_the_allowance_and_then_is_the_reason() -> None:
    warmup = _stored(preset="standard")
    day_3 = day_quota(100, warmup, _noon(3))  # the ramp would allow 112
    assert (day_3.allowance, day_3.effective, day_3.ramp_limits) == (112, 100, False)
    assert day_3.exhausted_reason("svc") == "daily_quota_exhausted:svc"
    day_2 = day_quota(100, warmup, _noon(2))
    assert (day_2.effective, day_2.exhausted_reason("svc")) == (75, "warmup_allowance:svc")


def test_the_day_turns_at_midnight_utc() -> None:
    warmup = _stored(preset="standard")
    midnight = datetime(2026, 12, 1, tzinfo=UTC).timestamp()  # the start of ramp day 2
    assert effective_daily_quota(BIG_QUOTA, warmup, midnight - 0.001) == 50
    assert effective_daily_quota(BIG_QUOTA, warmup, midnight) == 75


def test_years_into_a_ramp_it_no_longer_limits_and_nothing_overflows() -> None:
    ramp = Ramp(start_day=START, first_day=50, growth=1.5)
    assert ramp.allowance(100) is None  # 50 x 1.5^99 is beyond any quota
    assert ramp.allowance(5000) is None  # 1.5^4999 would overflow a float
    assert effective_daily_quota(2_000, _stored(preset="standard"), _noon(4000)) == 2_000


def test_no_ramp_is_the_daily_quota() -> None:
    quota = day_quota(700, None, _noon(1))
    assert (quota.effective, quota.ramp_limits, quota.exhausted_reason("s")) == (700, False, "daily_quota_exhausted:s")
    assert warmup_out(quota) is None


def test_the_output_shows_the_day_and_its_allowance() -> None:
    out = warmup_out(day_quota(100, _stored(preset="standard"), _noon(2)))
    assert out is not None
    assert out.model_dump() == {
        "preset": "standard",
        "start_day": "2026-11-30",
        "first_day": 50,
        "growth": 1.5,
        "schedule": None,
        "day": 2,
        "allowance_today": 75,
        "effective_daily_quota": 75,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"preset": "turbo"},
        {"preset": "custom"},  # no schedule
        {"preset": "standard", "schedule": [1, 2]},
        {"preset": "custom", "schedule": [1], "growth": 2},
        {"growth": 1},
        {"growth": 0.5},
        {"first_day": 0},
        {"schedule": []},
        {"preset": "custom", "schedule": [-1]},
        {"start_day": "30/11/2026"},
        {"ramp": "fast"},
    ],
)
def test_bad_ramps_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="validation error"):
        WarmupIn.model_validate(body)
