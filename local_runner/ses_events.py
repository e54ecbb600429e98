"""SES's event notifications, made locally (tooling; the product only reads them):

- the records SES publishes for an email (docs.aws.amazon.com/ses/latest/dg/
  event-publishing-retrieving-sns-contents.html and the -examples page), in the SNS envelope a
  topic's SQS subscription delivers or the EventBridge envelope a rule delivers;
- `SesMailboxSimulator`: for each message the embedded SES accepted, publishes to the SES events
  topic what real SES would: Send, then Delivery for an ordinary address, and for SES's mailbox
  simulator addresses (docs.aws.amazon.com/ses/latest/dg/send-an-email-from-console.html) a
  permanent bounce (`bounce@`), Delivery and Complaint (`complaint@`), Delivery (`ooto@`; the
  auto-reply itself is not made), a permanent bounce On Account Suppression List (`suppressionlist@`);
- `replay`: event files (a bare record, or either envelope) published to the topic or sent to the
  queue, optionally with another message id (`python -m local_runner replay-events`).

`python -m local_runner.ses_events` rewrites the samples in events/ from these builders."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from local_runner.moto_server import EmbeddedAws, SentRawMessage
from local_runner.template import LOCAL_ACCOUNT, LOCAL_REGION, REPO_ROOT
from local_runner.triggers import PollingThread, sqs_event

SIMULATOR_DOMAIN = "simulator.amazonses.com"
EVENTS_DIR = REPO_ROOT / "events"
TOPIC_LOGICAL_ID = "SesEventsTopic"
QUEUE_LOGICAL_ID = "SesEventsQueue"
SNS_BATCH = 10  # entries one PublishBatch takes

# eventType -> the EventBridge detail-type SES gives it.
DETAIL_TYPES = {
    "Send": "Email Sent",
    "Delivery": "Email Delivered",
    "Bounce": "Email Bounced",
    "Complaint": "Email Complaint Received",
    "Reject": "Email Rejected",
    "Rendering Failure": "Email Rendering Failed",
    "DeliveryDelay": "Email Delivery Delayed",
    "Subscription": "Email Subscribed",
}


def _stable_id(*parts: str) -> str:
    """The same id for the same notification (samples are rewritten identically; SNS and
    EventBridge give each delivery its own id, a redelivery keeps it)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(epoch * 1000) % 1000:03d}Z"


def mail_object(
    message_id: str, source: str, destination: Sequence[str], tags: Iterable[tuple[str, str]], at: float
) -> dict[str, Any]:
    """The `mail` object every event record carries."""
    tag_map: dict[str, list[str]] = {
        "ses:operation": ["SendEmail"],
        "ses:source-ip": ["192.0.2.0"],
        "ses:from-domain": [source.rpartition("@")[2].rstrip(">")],
        "ses:caller-identity": ["edm-scheduler"],
    }
    for name, value in tags:
        tag_map.setdefault(name, []).append(value)
    return {
        "timestamp": _iso(at),
        "source": source,
        "sourceArn": f"arn:aws:ses:{LOCAL_REGION}:{LOCAL_ACCOUNT}:identity/{source.rpartition('@')[2].rstrip('>')}",
        "sendingAccountId": LOCAL_ACCOUNT,
        "messageId": message_id,
        "destination": list(destination),
        "headersTruncated": False,
        "headers": [{"name": "From", "value": source}, {"name": "To", "value": ", ".join(destination)}],
        "commonHeaders": {"from": [source], "to": list(destination), "messageId": message_id},
        "tags": tag_map,
    }


# A DeliveryDelay's SMTP status and diagnostic per delayType (what providers answer).
DELAY_DIAGNOSTICS = {
    "TransientCommunicationFailure": ("4.4.1", "smtp; 421 4.4.1 Unable to connect to remote host"),
    "IPFailure": (
        "4.7.28",
        "smtp; 421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your "
        "IP address. To protect our users from spam, mail sent from your IP address has been temporarily "
        "rate limited.",
    ),
    "MailboxFull": ("4.2.2", "smtp; 452 4.2.2 The email account that you tried to reach is over quota."),
    "InternalFailure": ("4.0.0", "Amazon SES had an internal failure"),
}


def event_record(
    kind: str, mail: dict[str, Any], at: float, *, delay_type: str = "TransientCommunicationFailure"
) -> dict[str, Any]:
    """One event record of `kind`: send, delivery, bounce (permanent), soft_bounce (transient),
    suppressed (permanent, OnAccountSuppressionList), complaint, reject, delivery_delay (of
    `delay_type`), rendering_failure, unsubscribe (a Subscription event unsubscribing from all)."""
    recipient = mail["destination"][0]
    stamp = _iso(at)
    feedback = f"{_stable_id(mail['messageId'], kind)}-000000"
    if kind == "send":
        return {"eventType": "Send", "mail": mail, "send": {}}
    if kind == "delivery":
        return {
            "eventType": "Delivery",
            "mail": mail,
            "delivery": {
                "timestamp": stamp,
                "processingTimeMillis": 546,
                "recipients": [recipient],
                "smtpResponse": "250 2.6.0 Message received",
                "reportingMTA": "a8-70.smtp-out.amazonses.com",
            },
        }
    if kind in ("bounce", "soft_bounce", "suppressed"):
        bounce_type, sub_type, status, diagnostic = {
            "bounce": ("Permanent", "General", "5.1.1", "smtp; 550 5.1.1 user unknown"),
            "soft_bounce": ("Transient", "MailboxFull", "4.2.2", "smtp; 452 4.2.2 mailbox full"),
            "suppressed": (
                "Permanent",
                "OnAccountSuppressionList",
                "5.1.1",
                "Amazon SES did not send the message to this address because it is on the suppression "
                "list for your account.",
            ),
        }[kind]
        return {
            "eventType": "Bounce",
            "mail": mail,
            "bounce": {
                "bounceType": bounce_type,
                "bounceSubType": sub_type,
                "bouncedRecipients": [
                    {"emailAddress": recipient, "action": "failed", "status": status, "diagnosticCode": diagnostic}
                ],
                "timestamp": stamp,
                "feedbackId": feedback,
                "reportingMTA": "dsn; e240-13.smtp-out.amazonses.com",
            },
        }
    if kind == "complaint":
        return {
            "eventType": "Complaint",
            "mail": mail,
            "complaint": {
                "feedbackId": feedback,
                "complaintSubType": None,
                "complainedRecipients": [{"emailAddress": recipient}],
                "timestamp": stamp,
                "userAgent": "Amazon SES Mailbox Simulator",
                "complaintFeedbackType": "abuse",
                "arrivalDate": stamp,
            },
        }
    if kind == "reject":
        return {"eventType": "Reject", "mail": mail, "reject": {"reason": "Bad content"}}
    if kind == "delivery_delay":
        status, diagnostic = DELAY_DIAGNOSTICS.get(delay_type, ("4.0.0", f"smtp; 421 {delay_type}"))
        return {
            "eventType": "DeliveryDelay",
            "mail": mail,
            "deliveryDelay": {
                "timestamp": stamp,
                "delayType": delay_type,
                "expirationTime": _iso(at + 86_400),
                "delayedRecipients": [{"emailAddress": recipient, "status": status, "diagnosticCode": diagnostic}],
            },
        }
    if kind == "rendering_failure":
        return {
            "eventType": "Rendering Failure",
            "mail": mail,
            "failure": {"errorMessage": "Attribute 'name' is not present in the rendering data.", "templateName": "t"},
        }
    if kind == "unsubscribe":
        return {
            "eventType": "Subscription",
            "mail": mail,
            "subscription": {
                "contactList": "edm",
                "timestamp": stamp,
                "source": "UnsubscribeHeader",
                "newTopicPreferences": {"unsubscribeAll": True, "topicSubscriptionStatus": []},
                "oldTopicPreferences": {"unsubscribeAll": False, "topicSubscriptionStatus": []},
            },
        }
    raise ValueError(f"unknown event kind {kind!r}")


def sns_envelope(record: dict[str, Any], topic_arn: str, at: float) -> dict[str, Any]:
    """What a topic's SQS subscription (without raw delivery) puts in the message body."""
    return {
        "Type": "Notification",
        "MessageId": _stable_id("sns", json.dumps(record, sort_keys=True)),
        "TopicArn": topic_arn,
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(record),
        "Timestamp": _iso(at),
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": f"https://sns.{LOCAL_REGION}.amazonaws.com/SimpleNotificationService-EXAMPLE.pem",
        "UnsubscribeURL": f"https://sns.{LOCAL_REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:1",
    }


def eventbridge_envelope(
    record: dict[str, Any], at: float, configuration_set: str = "edm-scheduler-events"
) -> dict[str, Any]:
    """What an EventBridge rule puts in the message body for an event SES sent to the default bus."""
    return {
        "version": "0",
        "id": _stable_id("events", json.dumps(record, sort_keys=True)),
        "detail-type": DETAIL_TYPES[record["eventType"]],
        "source": "aws.ses",
        "account": LOCAL_ACCOUNT,
        "time": _iso(at)[:19] + "Z",
        "region": LOCAL_REGION,
        "resources": [f"arn:aws:ses:{LOCAL_REGION}:{LOCAL_ACCOUNT}:configuration-set/{configuration_set}"],
        "detail": record,
    }


def simulated_kinds(recipient: str) -> list[str]:
    """What SES reports for a message to this address (its mailbox simulator's, by local part;
    `bounce+label@` is `bounce@`), Send first."""
    local, _, domain = recipient.strip().lower().rpartition("@")
    if domain != SIMULATOR_DOMAIN:
        return ["send", "delivery"]
    scenario = local.split("+", 1)[0]
    return {
        "bounce": ["send", "bounce"],
        "complaint": ["send", "delivery", "complaint"],
        "ooto": ["send", "delivery"],
        "suppressionlist": ["send", "suppressed"],
    }.get(scenario, ["send", "delivery"])


def records_for(message: SentRawMessage, at: float) -> list[dict[str, Any]]:
    mail = mail_object(message.message_id, message.source, message.destinations, message.tags, at)
    return [event_record(kind, mail, at) for kind in simulated_kinds(message.destinations[0])]


class SesMailboxSimulator(PollingThread):
    """Publishes to the SES events topic, for every message the embedded SES accepted, the events
    real SES would (Send, Delivery, Bounce, Complaint: `simulated_kinds`), `delay` seconds after it
    was accepted (real SES reports a delivery seconds after the send), ten to a PublishBatch. Next
    to OutboxWriter, with its own position in the same append-only list."""

    name = "ses-simulator"

    def __init__(self, aws: EmbeddedAws, sns: Any, topic_arn: str, interval: float = 0.5, delay: float = 2.0) -> None:
        super().__init__(interval)
        self._aws = aws
        self._sns = sns
        self.topic_arn = topic_arn
        self.delay = delay
        self.seen = 0
        self.published = 0
        self._waiting: list[tuple[float, SentRawMessage]] = []  # (seen at, message), oldest first

    def poll_once(self) -> bool:
        now = time.monotonic()
        fresh = self._aws.sent_raw_messages(start=self.seen)
        self._waiting += [(now, message) for message in fresh]
        self.seen += len(fresh)
        due = [message for seen_at, message in self._waiting if now - seen_at >= self.delay]
        records = [record for message in due if message.destinations for record in records_for(message, time.time())]
        for start in range(0, len(records), SNS_BATCH):
            chunk = records[start : start + SNS_BATCH]
            self._sns.publish_batch(
                TopicArn=self.topic_arn,
                PublishBatchRequestEntries=[
                    {"Id": str(index), "Message": json.dumps(record)} for index, record in enumerate(chunk)
                ],
            )
        # Only once all are published (a failed publish raises first: they are tried again).
        self._waiting = self._waiting[len(due) :]
        self.published += len(records)
        return False


def record_of(document: dict[str, Any]) -> dict[str, Any]:
    """The bare record of a file holding a record, an SNS envelope or an EventBridge envelope."""
    if document.get("Type") == "Notification" and isinstance(document.get("Message"), str):
        record: dict[str, Any] = json.loads(document["Message"])
        return record
    if "detail-type" in document and isinstance(document.get("detail"), dict):
        detail: dict[str, Any] = document["detail"]
        return detail
    return document


def _rewrapped(document: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    if document.get("Type") == "Notification":
        return {**document, "Message": json.dumps(record)}
    if "detail-type" in document:
        return {**document, "detail": record}
    return record


def with_message_id(document: dict[str, Any], message_id: str) -> dict[str, Any]:
    """The same notification (same envelope) about another message."""
    record = record_of(document)
    return _rewrapped(document, {**record, "mail": {**record["mail"], "messageId": message_id}})


# The details objects whose `timestamp` says when the event happened.
_DETAILS = ("bounce", "complaint", "delivery", "deliveryDelay", "subscription")


def restamped(document: dict[str, Any], at: float) -> dict[str, Any]:
    """The same notification as if it happened at `at` (the samples are dated 2026-11-30; a delivery
    delay older than the deferral cooldown tightens nothing: docs/deferrals.md)."""
    record = record_of(document)
    record = {**record, "mail": {**record["mail"], "timestamp": _iso(at)}}
    for name in _DETAILS:
        if isinstance(record.get(name), dict):
            record[name] = {**record[name], "timestamp": _iso(at)}
    return _rewrapped(document, record)


def replay(
    files: Sequence[Path],
    sqs: Any,
    sns: Any,
    queue_url: str,
    topic_arn: str,
    message_id: str | None,
    at: float | None = None,
) -> int:
    """Each file into the running system: a bare record is published to the topic (SNS wraps it, as
    for SES's own); a file already in an envelope is sent to the queue as it is (what SNS or
    EventBridge would deliver), about `message_id` and restamped at `at` when given. Returns how
    many were sent."""
    sent = 0
    for path in files:
        document = json.loads(path.read_text())
        if message_id:
            document = with_message_id(document, message_id)
        if at is not None:
            document = restamped(document, at)
        if document.get("Type") == "Notification" or "detail-type" in document:
            sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(document))
        else:
            sns.publish(TopicArn=topic_arn, Message=json.dumps(document))
        sent += 1
    return sent


# ------------------------------------------------------------------ the samples in events/

SAMPLE_AT = 1_796_000_000.0  # 2026-11-30T00:53:20Z, the tests' fake clock
SAMPLE_TAGS = (
    ("task_id", "task_example"),
    ("user_id", "alice"),
    ("service_id", "svc_example"),
    ("ses:configuration-set", "edm-scheduler-events"),
)
# sample name -> (kind, recipient)
SAMPLES = {
    "send": ("send", f"success@{SIMULATOR_DOMAIN}"),
    "delivery": ("delivery", f"success@{SIMULATOR_DOMAIN}"),
    "bounce_permanent": ("bounce", f"bounce@{SIMULATOR_DOMAIN}"),
    "bounce_transient": ("soft_bounce", "full-mailbox@example.com"),
    "complaint": ("complaint", f"complaint@{SIMULATOR_DOMAIN}"),
    "reject": ("reject", "recipient@example.com"),
    "delivery_delay": ("delivery_delay", "slow@example.com"),
    "delivery_delay_throttled": ("delivery_delay", "reader@gmail.com"),
}
# A sample's DeliveryDelay type when not the default: a provider throttling the sending IP
# (core.deliverability.deferrals tightens the recipient's group for it).
SAMPLE_DELAY_TYPES = {"delivery_delay_throttled": "IPFailure"}


def sample_documents() -> dict[str, dict[str, Any]]:
    """events/ses/<name>_sns.json and <name>_eventbridge.json, and the SQS event
    events/events_ses_notifications.json that carries them (plus one malformed body) to
    EventsFunction."""
    topic_arn = f"arn:aws:sns:{LOCAL_REGION}:{LOCAL_ACCOUNT}:{TOPIC_LOGICAL_ID}"
    documents: dict[str, dict[str, Any]] = {}
    bodies = []
    for index, (name, (kind, recipient)) in enumerate(SAMPLES.items()):
        message_id = f"0100019ad5c1{index:04x}-5e2f7a1c-9d3b-4c8e-a6f0-{name.replace('_', '')[:8]:0>8}-000000"
        mail = mail_object(message_id, "News <news@shop.example>", [recipient], SAMPLE_TAGS, SAMPLE_AT)
        delay_type = SAMPLE_DELAY_TYPES.get(name, "TransientCommunicationFailure")
        record = event_record(kind, mail, SAMPLE_AT + 2, delay_type=delay_type)
        sns = sns_envelope(record, topic_arn, SAMPLE_AT + 3)
        bridge = eventbridge_envelope(record, SAMPLE_AT + 3)
        documents[f"ses/{name}_sns.json"] = sns
        documents[f"ses/{name}_eventbridge.json"] = bridge
        bodies += [json.dumps(sns), json.dumps(bridge)]
    bodies.append('{"Type": "Notification", "Message": "not json"}')
    event = sqs_event(
        [
            {
                "MessageId": f"5e0a1f0c-0000-4000-8000-{index:012d}",
                "ReceiptHandle": f"AQEB-sample-{index}",
                "Body": body,
                "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1796000003000"},
                "MessageAttributes": {},
                "MD5OfBody": "",
            }
            for index, body in enumerate(bodies)
        ],
        f"arn:aws:sqs:{LOCAL_REGION}:{LOCAL_ACCOUNT}:{QUEUE_LOGICAL_ID}",
    )
    documents["events_ses_notifications.json"] = event
    return documents


def write_samples(folder: Path = EVENTS_DIR) -> list[Path]:
    written = []
    for name, document in sample_documents().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_samples():
        print(written_path.relative_to(REPO_ROOT))
