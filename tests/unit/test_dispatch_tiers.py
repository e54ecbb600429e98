"""Pace tiers (core.dispatch.tiers): which dispatcher function and wake-up queue serve a service."""

from __future__ import annotations

from core.dispatch.schedules import ScheduleConfig, schedule_request
from core.dispatch.tiers import PACED_MIN_INTERVAL_SECONDS, Tier, TierTargets, tier_of


def test_services_at_most_ten_a_second_are_paced() -> None:
    assert tier_of(PACED_MIN_INTERVAL_SECONDS) is Tier.PACED
    assert tier_of(60.0) is Tier.PACED
    assert tier_of(0.0999) is Tier.FAST
    assert tier_of(0.0001) is Tier.FAST


def test_targets_fall_back_to_the_fast_one_without_a_paced_target_or_a_rate() -> None:
    both = TierTargets("fast-arn", "paced-arn")
    assert both.for_rate(1.0) == "paced-arn"
    assert both.for_rate(0.01) == "fast-arn"
    assert both.for_rate(None) == "fast-arn"
    assert TierTargets("fast-arn").for_rate(1.0) == "fast-arn"


def test_a_schedule_targets_the_dispatcher_of_its_services_tier() -> None:
    config = ScheduleConfig(group="g", dispatcher_arn="fast-arn", role_arn="role", paced_dispatcher_arn="paced-arn")
    assert schedule_request(config, "svc", "ENABLED", 2.0)["Target"]["Arn"] == "paced-arn"
    assert schedule_request(config, "svc", "ENABLED", 0.001)["Target"]["Arn"] == "fast-arn"
