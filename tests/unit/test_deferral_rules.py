"""Provider deferral rules without AWS (core.deliverability.deferrals): which DeliveryDelay types
mean the provider is pushing back, and how a group's entry moves with each throttling delay."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.deliverability.deferrals import (
    EXTEND_AT_LEAST_SECONDS,
    RULES,
    Deferral,
    DeferralPolicy,
    active_levels,
    is_throttling,
    next_deferral,
    rule_of,
)
from core.deliverability.ses_events import occurred_at, parse
from core.mail.providers import group_of
from core.settings import Settings
from local_runner.ses_events import SAMPLE_DELAY_TYPES, event_record, mail_object, restamped
from tests.unit.test_ses_event_rules import EVENTS

POLICY = DeferralPolicy(cooldown_seconds=1800, step_seconds=300, max_level=4)
T = 1_796_000_000.0

# Every delayType SES documents (event-publishing-retrieving-sns-contents.html, "Delivery delay object").
DOCUMENTED = {
    "InternalFailure",
    "General",
    "MailboxFull",
    "SpamDetected",
    "RecipientServerError",
    "IPFailure",
    "TransientCommunicationFailure",
    "BYOIPHostNameLookupUnavailable",
    "Undetermined",
    "SendingDeferral",
}


def test_every_documented_delay_type_has_a_rule_with_a_reason() -> None:
    assert set(RULES) == DOCUMENTED
    assert all(rule.why for rule in RULES.values())


@pytest.mark.parametrize(
    "delay_type",
    [
        "SpamDetected",
        "IPFailure",
        "TransientCommunicationFailure",
        "RecipientServerError",
        "General",
        "SendingDeferral",
    ],
)
def test_provider_pushback_tightens(delay_type: str) -> None:
    assert is_throttling(delay_type)


@pytest.mark.parametrize("delay_type", ["MailboxFull", "InternalFailure", "BYOIPHostNameLookupUnavailable"])
def test_causes_other_than_the_provider_do_not(delay_type: str) -> None:
    assert not is_throttling(delay_type)


@pytest.mark.parametrize("delay_type", ["", "SomethingSesAddsLater", "ipfailure"])
def test_a_type_without_a_rule_tightens_nothing(delay_type: str) -> None:
    assert not is_throttling(delay_type) and rule_of(delay_type).why


def test_the_throttled_sample_is_a_throttling_delay_of_gmail_mail() -> None:
    event = parse((EVENTS / "ses" / "delivery_delay_throttled_sns.json").read_text())
    assert event.delivery_delay is not None and is_throttling(event.delivery_delay.delay_type)
    assert group_of(event.mail.destination[0]) == "gmail"
    assert SAMPLE_DELAY_TYPES["delivery_delay_throttled"] == event.delivery_delay.delay_type


@pytest.mark.parametrize("envelope", ["sns", "eventbridge"])
def test_a_replay_restamped_now_is_current_in_either_envelope(envelope: str) -> None:
    # The samples are dated 2026-11-30: `replay-events --now` makes the delay current
    document = json.loads((EVENTS / "ses" / f"delivery_delay_throttled_{envelope}.json").read_text())
    event = parse(json.dumps(restamped(document, T + 86_400)))
    assert event.delivery_delay is not None and event.delivery_delay.timestamp is not None
    assert occurred_at(event, 0) == event.delivery_delay.timestamp.timestamp() == T + 86_400
    assert event.mail.timestamp is not None and event.mail.timestamp.timestamp() == T + 86_400
    assert (
        event.delivery_delay.delay_type == "IPFailure"
        and event.mail.message_id == parse(json.dumps(document)).mail.message_id
    )


def test_the_builder_makes_each_delay_type() -> None:
    mail = mail_object("m-1", "a@shop.example", ["b@gmail.com"], [], T)
    for delay_type in DOCUMENTED:
        event = parse(json.dumps(event_record("delivery_delay", mail, T, delay_type=delay_type)))
        assert event.delivery_delay is not None and event.delivery_delay.delay_type == delay_type


def test_the_policy_comes_from_settings() -> None:
    settings = Settings(deferral_cooldown_seconds=600, deferral_step_seconds=60, deferral_max_level=2)
    assert DeferralPolicy.from_settings(settings) == DeferralPolicy(600.0, 60.0, 2)
    assert DeferralPolicy.from_settings(Settings()) == DeferralPolicy(1800.0, 300.0, 4)


def test_a_first_delay_starts_level_one_for_the_cooldown() -> None:
    assert next_deferral(None, T, POLICY) == Deferral(level=1, since=T, until=T + 1800)


def test_a_delay_within_the_step_only_extends() -> None:
    current = Deferral(level=2, since=T, until=T + 1800)
    assert next_deferral(current, T + 299, POLICY) == Deferral(level=2, since=T, until=T + 299 + 1800)


def test_a_delay_a_step_after_the_last_raise_raises_one_level() -> None:
    current = Deferral(level=2, since=T, until=T + 1800)
    assert next_deferral(current, T + 300, POLICY) == Deferral(level=3, since=T + 300, until=T + 2100)


def test_the_level_stops_at_the_cap() -> None:
    current = Deferral(level=4, since=T, until=T + 1800)
    assert next_deferral(current, T + 900, POLICY) == Deferral(level=4, since=T, until=T + 2700)


def test_an_expired_entry_restarts_at_level_one() -> None:
    current = Deferral(level=4, since=T, until=T + 1800)
    assert next_deferral(current, T + 1800, POLICY) == Deferral(level=1, since=T + 1800, until=T + 3600)


def test_a_delay_within_a_minute_of_the_last_extension_writes_nothing() -> None:
    current = Deferral(level=1, since=T, until=T + 1800)
    assert next_deferral(current, T + EXTEND_AT_LEAST_SECONDS - 1, POLICY) == current
    assert next_deferral(current, T + EXTEND_AT_LEAST_SECONDS, POLICY).until == T + EXTEND_AT_LEAST_SECONDS + 1800


def test_an_earlier_delay_arriving_late_leaves_a_later_until() -> None:
    current = Deferral(level=1, since=T, until=T + 1900)
    assert next_deferral(current, T + 50, POLICY) == current


@given(st.lists(st.floats(min_value=0, max_value=20_000, allow_nan=False), min_size=1, max_size=60))
def test_over_any_run_of_delays_the_level_rises_at_most_once_per_step(offsets: list[float]) -> None:
    # Between two raises at least a step passes; the level stays within 1..cap; until only grows
    # while the entry is active, and never falls short of now + cooldown by a minute or more
    current: Deferral | None = None
    raises: list[float] = []
    for now in sorted(T + offset for offset in offsets):
        following = next_deferral(current, now, POLICY)
        kept = current.until if current and current.active(now) else now
        assert 1 <= following.level <= POLICY.max_level
        assert kept <= following.until <= max(kept, now + 1800)
        assert following.until > now + 1800 - EXTEND_AT_LEAST_SECONDS
        if current is not None and current.active(now) and following.level > current.level:
            raises.append(now)
        current = following
    assert all(later - earlier >= POLICY.step_seconds for earlier, later in pairwise(raises))


def test_active_levels_leave_out_expired_entries() -> None:
    stored = {
        "gmail": {"level": 2, "since": T, "until": T + 10},
        "yahoo": {"level": 1, "since": T, "until": T},
    }
    assert active_levels(stored, T) == {"gmail": 2}
    assert active_levels(None, T) == {}
