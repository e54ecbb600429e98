"""Parsing SES's event notifications and the event -> effect table, without AWS: every sample in
events/ses (AWS's documented shapes) parses from both envelopes to the same record; each event type
has its kind; the table names real counters and attributes; sends carry SES-safe tags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.deliverability.ses_events import (
    EFFECTS,
    STATE_ORDER,
    EventKind,
    MalformedEvent,
    delivery_state,
    detail_of,
    kind_of,
    occurred_at,
    parse,
)
from core.dispatch.sender import email_tag, send_request
from core.states import SuppressionReason
from core.storage.models import SubtaskModel, TaskCounts
from local_runner.ses_events import (
    SAMPLES,
    event_record,
    mail_object,
    sample_documents,
    simulated_kinds,
    with_message_id,
)

EVENTS = Path(__file__).resolve().parents[2] / "events"

EXPECTED_KIND = {
    "send": EventKind.SEND,
    "delivery": EventKind.DELIVERY,
    "bounce_permanent": EventKind.PERMANENT_BOUNCE,
    "bounce_transient": EventKind.SOFT_BOUNCE,
    "complaint": EventKind.COMPLAINT,
    "reject": EventKind.REJECT,
    "delivery_delay": EventKind.DELIVERY_DELAY,
    "delivery_delay_throttled": EventKind.DELIVERY_DELAY,
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_sample_parses_the_same_from_both_envelopes(name: str) -> None:
    sns = parse((EVENTS / "ses" / f"{name}_sns.json").read_text())
    bridge = parse((EVENTS / "ses" / f"{name}_eventbridge.json").read_text())
    bare = parse(json.loads((EVENTS / "ses" / f"{name}_sns.json").read_text())["Message"])

    assert sns == bridge == bare
    assert kind_of(sns) is EXPECTED_KIND[name]
    assert sns.mail.tag("task_id") == "task_example" and sns.mail.message_id.endswith("-000000")


def test_the_samples_on_disk_are_what_the_builders_make() -> None:
    for name, document in sample_documents().items():
        assert json.loads((EVENTS / name).read_text()) == document, name


def test_identity_notifications_use_notification_type() -> None:
    # Feedback notifications (no configuration set) name the type `notificationType`
    record = {"notificationType": "Bounce", "mail": {"messageId": "m-1"}, "bounce": {"bounceType": "Permanent"}}
    assert kind_of(parse(json.dumps(record))) is EventKind.PERMANENT_BOUNCE


def test_details_and_times_come_from_the_event() -> None:
    mail = mail_object("m-1", "a@shop.example", ["b@example.org"], [], 100.0)
    bounce = parse(json.dumps(event_record("bounce", mail, 250.5)))
    delay = parse(json.dumps(event_record("delivery_delay", mail, 300.0)))
    send = parse(json.dumps(event_record("send", mail, 999.0)))

    assert occurred_at(bounce, 0.0) == pytest.approx(250.5)
    assert occurred_at(send, 0.0) == pytest.approx(100.0)  # a Send has no time of its own: the mail's
    assert detail_of(bounce) == "smtp; 550 5.1.1 user unknown"
    assert detail_of(delay) is not None and detail_of(delay).startswith("TransientCommunicationFailure: ")  # type: ignore[union-attr]


def test_a_long_diagnostic_is_cut() -> None:
    mail = mail_object("m-1", "a@shop.example", ["b@example.org"], [], 100.0)
    record = event_record("bounce", mail, 100.0)
    record["bounce"]["bouncedRecipients"][0]["diagnosticCode"] = "x" * 5000
    assert len(detail_of(parse(json.dumps(record))) or "") == 500


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ("nope", "not JSON"),
        ("[]", "not a JSON object"),
        (json.dumps({"Type": "UnsubscribeConfirmation", "Message": "{}"}), "UnsubscribeConfirmation"),
        (json.dumps({"detail-type": "Email Sent", "source": "aws.s3", "detail": {}}), "aws.s3"),
        (json.dumps({"eventType": "Send", "mail": {"messageId": ""}}), "mail.messageId"),
        (
            json.dumps({"eventType": "Bounce", "mail": {"messageId": "m"}, "bounce": {"bounceType": "Hard"}}),
            "bounceType",
        ),
    ],
)
def test_malformed_messages_say_what_is_wrong(body: str, names: str) -> None:
    with pytest.raises(MalformedEvent, match=names):
        parse(body)


def test_every_kind_has_an_effect_naming_real_counters_and_attributes() -> None:
    assert set(EFFECTS) == set(EventKind) == set(STATE_ORDER)
    counters = set(TaskCounts.get_attributes())
    subtask_attributes = set(SubtaskModel.get_attributes())
    for kind, effect in EFFECTS.items():
        assert effect.timestamp in subtask_attributes, kind
        assert effect.counter is None or effect.counter in counters, kind
        assert effect.reputation in (None, "sent", "delivered", "bounced", "complained"), kind
    # Only permanent bounces, complaints and unsubscribes suppress
    assert {kind: effect.suppress for kind, effect in EFFECTS.items() if effect.suppress} == {
        EventKind.PERMANENT_BOUNCE: SuppressionReason.BOUNCED,
        EventKind.COMPLAINT: SuppressionReason.COMPLAINED,
        EventKind.UNSUBSCRIBE: SuppressionReason.UNSUBSCRIBED,
    }


def test_the_delivery_state_is_the_strongest_event_whatever_the_order() -> None:
    assert delivery_state(None) is None
    assert delivery_state({"send", "delivery"}) == "delivery"
    assert delivery_state({"delivery", "complaint", "send"}) == "complaint"
    assert delivery_state({"soft_bounce", "bounce"}) == "bounce"


def test_the_mailbox_simulator_addresses() -> None:
    assert simulated_kinds("success@simulator.amazonses.com") == ["send", "delivery"]
    assert simulated_kinds("Bounce+list1@Simulator.AmazonSES.com") == ["send", "bounce"]
    assert simulated_kinds("complaint@simulator.amazonses.com") == ["send", "delivery", "complaint"]
    assert simulated_kinds("ooto@simulator.amazonses.com") == ["send", "delivery"]
    assert simulated_kinds("suppressionlist@simulator.amazonses.com") == ["send", "suppressed"]
    assert simulated_kinds("someone@example.org") == ["send", "delivery"]


def test_replaying_under_another_message_id_keeps_the_envelope() -> None:
    sns = json.loads((EVENTS / "ses" / "complaint_sns.json").read_text())
    bridge = json.loads((EVENTS / "ses" / "complaint_eventbridge.json").read_text())
    assert parse(json.dumps(with_message_id(sns, "m-9"))).mail.message_id == "m-9"
    assert with_message_id(sns, "m-9")["Type"] == "Notification"
    assert parse(json.dumps(with_message_id(bridge, "m-9"))).mail.message_id == "m-9"
    assert with_message_id(bridge, "m-9")["detail-type"] == "Email Complaint Received"


def test_sends_carry_ses_safe_tags() -> None:
    subtask = SubtaskModel(
        "task_1#00", "ct_1", task_id="task_1", user_id="b3c1-4a…@x", service_id="svc_1", email="p@example.org"
    )
    tags = send_request("n@shop.example", subtask, b"raw", None)["EmailTags"]
    assert tags == [
        {"Name": "task_id", "Value": "task_1"},
        {"Name": "user_id", "Value": "b3c1-4a__x"},
        {"Name": "service_id", "Value": "svc_1"},
    ]
    assert email_tag("x", "a" * 300)["Value"] == "a" * 256
