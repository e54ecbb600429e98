"""The reputation guard's rules without AWS: when a window's rates trip a hold, the reason it gives,
the hour buckets and the window's first bucket (core.deliverability.reputation)."""

from __future__ import annotations

import pytest

from core.deliverability.reputation import ReputationPolicy, Window, bucket_of
from core.settings import Settings
from core.states import DISPATCHABLE, TaskStatus, can_move

DEFAULTS = ReputationPolicy()


def test_the_defaults_sit_below_the_levels_at_which_aws_reviews_an_account() -> None:
    assert (DEFAULTS.bounce_rate, DEFAULTS.complaint_rate, DEFAULTS.min_sends) == (0.04, 0.0008, 200)
    assert DEFAULTS.bounce_rate < 0.05 and DEFAULTS.complaint_rate < 0.001
    assert ReputationPolicy.from_settings(Settings()) == DEFAULTS


def test_settings_carry_every_threshold() -> None:
    settings = Settings(
        reputation_bounce_rate=0.02,
        reputation_complaint_rate=0.001,
        reputation_min_sends=50,
        reputation_window_hours=6,
        reputation_window_sends=1000,
    )
    assert ReputationPolicy.from_settings(settings) == ReputationPolicy(0.02, 0.001, 50, 6, 1000)


@pytest.mark.parametrize("sent", [0, 1, 150, 199])
def test_below_the_minimum_of_sends_nothing_trips_whatever_the_rates(sent: int) -> None:
    assert DEFAULTS.breach(Window(sent=sent, bounced=sent, complained=sent)) is None


@pytest.mark.parametrize(
    ("sent", "bounced", "reason"),
    [
        (200, 7, None),  # 3.5 %
        (200, 8, "bounce_rate:4%_of_200_sends"),  # exactly 4 %
        (250, 10, "bounce_rate:4%_of_250_sends"),
        (260, 12, "bounce_rate:4.62%_of_260_sends"),
        (1000, 39, None),
        (1000, 40, "bounce_rate:4%_of_1000_sends"),
    ],
)
def test_the_bounce_threshold_trips_at_or_over_it(sent: int, bounced: int, reason: str | None) -> None:
    assert DEFAULTS.breach(Window(sent=sent, bounced=bounced)) == reason


def test_a_rate_exactly_at_the_threshold_trips_where_floats_would_land_a_hair_above_it() -> None:
    assert 0.07 * 100 > 7  # 7.000000000000001
    assert ReputationPolicy(bounce_rate=0.07, min_sends=100).breach(Window(sent=100, bounced=7)) == (
        "bounce_rate:7%_of_100_sends"
    )


@pytest.mark.parametrize(
    ("sent", "complained", "reason"),
    [
        (2500, 1, None),  # 0.04 %
        (2500, 2, "complaint_rate:0.08%_of_2500_sends"),  # exactly 0.08 %
        (1249, 1, "complaint_rate:0.08%_of_1249_sends"),  # 0.0801 %
        (1250, 1, "complaint_rate:0.08%_of_1250_sends"),  # exactly 0.08 %
        (1251, 1, None),
        (200, 1, "complaint_rate:0.5%_of_200_sends"),
    ],
)
def test_the_complaint_threshold_trips_at_or_over_it(sent: int, complained: int, reason: str | None) -> None:
    assert DEFAULTS.breach(Window(sent=sent, complained=complained)) == reason


def test_the_bounce_reason_comes_first_when_both_trip() -> None:
    assert DEFAULTS.breach(Window(sent=300, bounced=30, complained=3)) == "bounce_rate:10%_of_300_sends"


def test_hour_buckets_are_utc_hours_and_the_window_ends_with_the_current_one() -> None:
    now = 1_796_000_000.0  # 2026-11-30T00:53:20Z
    assert bucket_of(now) == "2026-11-30T00"
    assert bucket_of(now - 5 * 3600) == "2026-11-29T19"
    assert DEFAULTS.first_bucket(now) == "2026-11-29T01"  # 24 buckets: 29T01 .. 30T00
    assert ReputationPolicy(window_hours=1).first_bucket(now) == "2026-11-30T00"


def test_a_task_finished_by_the_planner_of_a_held_tenant_may_be_paused_and_the_guard_pauses_every_open_one() -> None:
    assert can_move(TaskStatus.PLANNING, TaskStatus.PAUSED)
    assert all(can_move(status, TaskStatus.PAUSED) for status in DISPATCHABLE)
