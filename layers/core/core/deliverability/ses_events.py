"""What SES reports after a send, as it reaches the events queue, and what each report does.

SES publishes one JSON record per event (docs.aws.amazon.com/ses/latest/dg/
event-publishing-retrieving-sns-contents.html): `eventType` (or `notificationType` for an
identity's feedback notifications) names it, `mail.messageId` the email, and one object per type
the details. The record arrives as the body of an SQS message in one of two envelopes:

- SNS (a configuration set's SNS destination, subscribed to the queue without raw delivery):
  `{"Type": "Notification", "Message": "<the record as a JSON string>", ...}`;
- EventBridge (an EventBridge destination, the default bus, a rule targeting the queue):
  `{"detail-type": "Email Bounced", "source": "aws.ses", "detail": {<the record>}, ...}`.

A bare record (no envelope) is accepted too, which is what `replay-events` files may hold.

`EFFECTS` is the rule table: event kind -> which task counter moves, which reputation outcome it
feeds, whether the address is suppressed and why. core.deliverability.event_effects applies it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.states import SuppressionReason


class MalformedEvent(ValueError):
    """The message is not an SES event record in a known envelope (logged and dropped)."""


class _Shape(BaseModel):
    # Fields SES may add later are ignored; the ones read here must have their documented types.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Mail(_Shape):
    message_id: str = Field(alias="messageId", min_length=1, max_length=256)
    timestamp: datetime | None = None
    source: str | None = None
    destination: list[str] = Field(default_factory=list)
    # Event publishing: EmailTags plus SES's own (ses:configuration-set, ...), each a list of values.
    tags: dict[str, list[str]] = Field(default_factory=dict)

    def tag(self, name: str) -> str | None:
        values = self.tags.get(name) or []
        return values[0] if values else None


class Recipient(_Shape):
    email_address: str = Field(alias="emailAddress")
    action: str | None = None
    status: str | None = None
    diagnostic_code: str | None = Field(default=None, alias="diagnosticCode")


class Bounce(_Shape):
    bounce_type: Literal["Permanent", "Transient", "Undetermined"] = Field(alias="bounceType")
    bounce_sub_type: str = Field(default="", alias="bounceSubType")
    bounced_recipients: list[Recipient] = Field(default_factory=list, alias="bouncedRecipients")
    timestamp: datetime | None = None
    feedback_id: str | None = Field(default=None, alias="feedbackId")


class Complaint(_Shape):
    complained_recipients: list[Recipient] = Field(default_factory=list, alias="complainedRecipients")
    timestamp: datetime | None = None
    complaint_feedback_type: str | None = Field(default=None, alias="complaintFeedbackType")
    complaint_sub_type: str | None = Field(default=None, alias="complaintSubType")


class Delivery(_Shape):
    timestamp: datetime | None = None
    recipients: list[str] = Field(default_factory=list)
    smtp_response: str | None = Field(default=None, alias="smtpResponse")


class Reject(_Shape):
    reason: str = ""


class RenderingFailure(_Shape):
    error_message: str = Field(default="", alias="errorMessage")
    template_name: str | None = Field(default=None, alias="templateName")


class DeliveryDelay(_Shape):
    timestamp: datetime | None = None
    delay_type: str = Field(default="", alias="delayType")
    expiration_time: datetime | None = Field(default=None, alias="expirationTime")
    delayed_recipients: list[Recipient] = Field(default_factory=list, alias="delayedRecipients")


class TopicPreferences(_Shape):
    unsubscribe_all: bool = Field(default=False, alias="unsubscribeAll")


class Subscription(_Shape):
    timestamp: datetime | None = None
    contact_list: str | None = Field(default=None, alias="contactList")
    new_topic_preferences: TopicPreferences = Field(default_factory=TopicPreferences, alias="newTopicPreferences")


class SesEvent(_Shape):
    event_type: str = Field(alias="eventType", min_length=1, max_length=64)
    mail: Mail
    bounce: Bounce | None = None
    complaint: Complaint | None = None
    delivery: Delivery | None = None
    send: dict[str, Any] | None = None
    reject: Reject | None = None
    failure: RenderingFailure | None = None
    delivery_delay: DeliveryDelay | None = Field(default=None, alias="deliveryDelay")
    subscription: Subscription | None = None


# ------------------------------------------------------------------ envelopes


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, TypeError) as error:
        raise MalformedEvent(f"{what} is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise MalformedEvent(f"{what} is not a JSON object")
    return value


def unwrap(body: str) -> dict[str, Any]:
    """The SES record inside an SQS message body: SNS envelope, EventBridge envelope or bare."""
    outer = _json_object(body, "the message body")
    if "Type" in outer and "Message" in outer:  # SNS
        if outer["Type"] != "Notification":  # SubscriptionConfirmation, UnsubscribeConfirmation
            raise MalformedEvent(f"an SNS {outer['Type']!r} message, not a notification")
        if not isinstance(outer["Message"], str):
            raise MalformedEvent("the SNS Message is not a string")
        return _json_object(outer["Message"], "the SNS Message")
    if "detail-type" in outer and "detail" in outer:  # EventBridge
        if outer.get("source") != "aws.ses":
            raise MalformedEvent(f"an EventBridge event from {outer.get('source')!r}, not aws.ses")
        if not isinstance(outer["detail"], dict):
            raise MalformedEvent("the EventBridge detail is not an object")
        return outer["detail"]
    return outer


def parse(body: str) -> SesEvent:
    """The SES event an SQS message body carries; MalformedEvent names what is wrong."""
    record = unwrap(body)
    if "eventType" not in record and "notificationType" in record:  # identity feedback notifications
        record = {**record, "eventType": record["notificationType"]}
    try:
        return SesEvent.model_validate(record)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        raise MalformedEvent(f"{where}: {first['msg']}") from error


# ------------------------------------------------------------------ kinds and their effects


class EventKind(StrEnum):
    """What happened to one email, as recorded on its subtask (`ses_events`)."""

    SEND = "send"
    DELIVERY = "delivery"
    PERMANENT_BOUNCE = "bounce"
    SOFT_BOUNCE = "soft_bounce"  # Transient or Undetermined
    COMPLAINT = "complaint"
    REJECT = "reject"
    RENDERING_FAILURE = "rendering_failure"
    DELIVERY_DELAY = "delivery_delay"
    UNSUBSCRIBE = "unsubscribe"  # a Subscription event with unsubscribeAll


@dataclass(frozen=True)
class Effect:
    """What the first event of a kind does to its email's records (a repeat does nothing)."""

    timestamp: str  # the subtask attribute set to the event's time
    counter: str | None = None  # the TaskCounts counter moved +1, in the same write as the subtask
    reputation: str | None = None  # the reputation outcome it feeds ("sent", "delivered", ...)
    suppress: SuppressionReason | None = None  # the address goes on the tenant's suppression list
    soft_bounce: bool = False  # the contact's soft-bounce count moves +1, in the same write


EFFECTS: dict[EventKind, Effect] = {
    EventKind.SEND: Effect("ses_sent_at", reputation="sent"),
    EventKind.DELIVERY: Effect("delivered_at", counter="delivered", reputation="delivered"),
    EventKind.PERMANENT_BOUNCE: Effect(
        "bounced_at", counter="bounced", reputation="bounced", suppress=SuppressionReason.BOUNCED
    ),
    EventKind.SOFT_BOUNCE: Effect("soft_bounced_at", counter="soft_bounced", soft_bounce=True),
    EventKind.COMPLAINT: Effect(
        "complained_at", counter="complained", reputation="complained", suppress=SuppressionReason.COMPLAINED
    ),
    EventKind.REJECT: Effect("rejected_at", counter="rejected"),
    EventKind.RENDERING_FAILURE: Effect("rendering_failed_at"),
    EventKind.DELIVERY_DELAY: Effect("delayed_at"),
    EventKind.UNSUBSCRIBE: Effect("unsubscribed_at", suppress=SuppressionReason.UNSUBSCRIBED),
}

# Event types that are reported but change nothing here (opens and clicks are not tracked).
IGNORED_TYPES = frozenset({"Open", "Click"})

# The summary of a subtask's events, strongest first: what `delivery_state` answers.
STATE_ORDER: tuple[EventKind, ...] = (
    EventKind.COMPLAINT,
    EventKind.PERMANENT_BOUNCE,
    EventKind.REJECT,
    EventKind.RENDERING_FAILURE,
    EventKind.UNSUBSCRIBE,
    EventKind.SOFT_BOUNCE,
    EventKind.DELIVERY,
    EventKind.DELIVERY_DELAY,
    EventKind.SEND,
)

DETAIL_LIMIT = 500  # characters of SES's diagnostic kept on the subtask, as for send errors


def kind_of(event: SesEvent) -> EventKind | None:
    """The event's kind; None for a type that changes nothing (ignored or unknown: the caller logs
    which). A type whose details object is missing is malformed."""
    event_type = event.event_type
    if event_type in IGNORED_TYPES:
        return None
    simple = {
        "Send": EventKind.SEND,
        "Delivery": EventKind.DELIVERY,
        "Complaint": EventKind.COMPLAINT,
        "Reject": EventKind.REJECT,
        "Rendering Failure": EventKind.RENDERING_FAILURE,
        "DeliveryDelay": EventKind.DELIVERY_DELAY,
    }
    if event_type == "Bounce":
        if event.bounce is None:
            raise MalformedEvent("bounce: a Bounce event without its bounce object")
        return EventKind.PERMANENT_BOUNCE if event.bounce.bounce_type == "Permanent" else EventKind.SOFT_BOUNCE
    if event_type == "Subscription":
        if event.subscription is None:
            raise MalformedEvent("subscription: a Subscription event without its subscription object")
        return EventKind.UNSUBSCRIBE if event.subscription.new_topic_preferences.unsubscribe_all else None
    kind = simple.get(event_type)
    details = {
        EventKind.COMPLAINT: event.complaint,
        EventKind.REJECT: event.reject,
        EventKind.RENDERING_FAILURE: event.failure,
        EventKind.DELIVERY_DELAY: event.delivery_delay,
    }
    if kind in details and details[kind] is None:
        raise MalformedEvent(f"{event_type}: the event has no details object")
    return kind


def occurred_at(event: SesEvent, fallback: float) -> float:
    """When it happened, by SES's clock: the details' timestamp, else the send's, else `fallback`."""
    for details in (event.bounce, event.complaint, event.delivery, event.delivery_delay, event.subscription):
        if details is not None and details.timestamp is not None:
            return details.timestamp.timestamp()
    return event.mail.timestamp.timestamp() if event.mail.timestamp is not None else fallback


def _first(recipients: list[Recipient]) -> Recipient | None:
    return recipients[0] if recipients else None


def detail_of(event: SesEvent) -> str | None:
    """SES's words about what happened (a bounce's diagnostic, a complaint's feedback type, a
    delay's type, a rejection's reason), at most DETAIL_LIMIT characters."""
    text: str | None = None
    if event.bounce is not None:
        recipient = _first(event.bounce.bounced_recipients)
        text = (recipient.diagnostic_code or recipient.status) if recipient else None
    elif event.complaint is not None:
        text = event.complaint.complaint_feedback_type or event.complaint.complaint_sub_type
    elif event.delivery_delay is not None:
        recipient = _first(event.delivery_delay.delayed_recipients)
        diagnostic = recipient.diagnostic_code if recipient else None
        text = f"{event.delivery_delay.delay_type}: {diagnostic}" if diagnostic else event.delivery_delay.delay_type
    elif event.reject is not None:
        text = event.reject.reason
    elif event.failure is not None:
        text = event.failure.error_message
    return text[:DETAIL_LIMIT] if text else None


def delivery_state(kinds: set[str] | None) -> str | None:
    """The strongest thing SES reported about an email (STATE_ORDER), from its `ses_events`: the
    same whatever order the events came in."""
    for kind in STATE_ORDER:
        if kinds and kind.value in kinds:
            return kind.value
    return None
