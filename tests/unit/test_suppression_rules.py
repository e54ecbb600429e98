"""The suppression list's rules as data (which reason replaces which, which the tenant may remove
only with force, which go to SES's account list) and the best-effort SES account-level mirror
(moto has no PutSuppressedDestination: botocore's Stubber plays SES)."""

from __future__ import annotations

import logging

import boto3
import pytest
from botocore.stub import Stubber

from core.settings import Settings
from core.states import CONTACT_STATUS_OF_REASON, SuppressionReason
from core.suppressions import (
    REASON_RANK,
    RECIPIENT_REASONS,
    SES_REASON,
    AccountSuppressionList,
    weaker_reasons,
)


def test_every_reason_has_a_rank_and_a_contact_status_and_the_ranks_are_a_strict_order() -> None:
    assert set(REASON_RANK) == set(SuppressionReason) == set(CONTACT_STATUS_OF_REASON)
    assert sorted(REASON_RANK, key=REASON_RANK.__getitem__) == [
        SuppressionReason.MANUAL,
        SuppressionReason.UNSUBSCRIBED,
        SuppressionReason.BOUNCED,
        SuppressionReason.COMPLAINED,
    ]
    assert weaker_reasons(SuppressionReason.MANUAL) == []
    assert set(weaker_reasons(SuppressionReason.BOUNCED)) == {SuppressionReason.MANUAL, SuppressionReason.UNSUBSCRIBED}


def test_only_the_recipients_own_word_needs_force_and_only_ses_findings_are_mirrored() -> None:
    assert sorted(RECIPIENT_REASONS) == [SuppressionReason.COMPLAINED, SuppressionReason.UNSUBSCRIBED]
    assert SES_REASON == {SuppressionReason.BOUNCED: "BOUNCE", SuppressionReason.COMPLAINED: "COMPLAINT"}


def _ses() -> tuple[object, Stubber]:
    client = boto3.client("sesv2", region_name="us-east-1")  # credentials: the tests' dummy ones
    return client, Stubber(client)


def test_the_mirror_puts_bounces_and_complaints_with_the_ses_reason() -> None:
    client, stubber = _ses()
    stubber.add_response("put_suppressed_destination", {}, {"EmailAddress": "a@example.org", "Reason": "BOUNCE"})
    stubber.add_response("put_suppressed_destination", {}, {"EmailAddress": "b@example.org", "Reason": "COMPLAINT"})
    mirror = AccountSuppressionList(client)
    with stubber:
        assert mirror.put("a@example.org", SuppressionReason.BOUNCED) is True
        assert mirror.put("b@example.org", SuppressionReason.COMPLAINED) is True
        # the tenant's own reasons are not the account's business: no call (the Stubber would fail it)
        assert mirror.put("c@example.org", SuppressionReason.MANUAL) is False
        assert mirror.put("c@example.org", SuppressionReason.UNSUBSCRIBED) is False
    stubber.assert_no_pending_responses()


def test_a_refused_mirror_is_logged_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    client, stubber = _ses()
    stubber.add_client_error("put_suppressed_destination", "TooManyRequestsException", "slow down", 429)
    with stubber, caplog.at_level(logging.WARNING, logger="core.suppressions"):
        assert AccountSuppressionList(client).put("a@example.org", SuppressionReason.BOUNCED) is False
    assert "TooManyRequestsException" in caplog.text and "a@example.org" in caplog.text


def test_the_mirror_is_off_unless_the_operator_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = _ses()
    assert Settings().ses_account_suppression_mirror is False
    monkeypatch.setenv("SES_ACCOUNT_SUPPRESSION_MIRROR", "true")
    enabled = Settings().ses_account_suppression_mirror
    assert enabled is True
    assert AccountSuppressionList.from_settings(lambda: client, enabled) == AccountSuppressionList(client)
    assert AccountSuppressionList.from_settings(lambda: client, False) is None
