"""The SES events function (functions/events) on in-process moto with the template's tables: SES's
documented notifications, in the SNS and the EventBridge envelope, change the subtask, the task
counters, the contact, the suppression list and the reputation counters exactly once; repeats and
reordering change nothing; malformed and unknown events are dropped without failing the batch; a
failing write or a subtask not recorded yet fails only its own message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pynamodb.exceptions import TransactWriteError

from core.deliverability.event_effects import MATCH_ATTEMPTS, EventPorts, ReputationOutcome
from core.deliverability.ses_events import delivery_state
from core.settings import Settings
from core.states import SubtaskStatus, SuppressionReason, TaskStatus
from core.storage.ids import contact_id_for, subtask_partition
from core.storage.models import ContactModel, SubtaskModel, TaskModel, transaction_connection
from local_runner.ses_events import event_record, eventbridge_envelope, mail_object, sns_envelope
from tests.support.planning import seed_contacts, seed_task, seed_user

TOPIC = "arn:aws:sns:us-east-1:123456789012:SesEventsTopic"
QUEUE = "arn:aws:sqs:us-east-1:123456789012:SesEventsQueue"


@dataclass
class RecordingPorts:
    """The suppression list and reputation counters as calls received (their own modules are
    tested by their owners): what this function asks of them, and how often."""

    suppressed: list[tuple[str, str, SuppressionReason]] = field(default_factory=list)
    recorded: list[ReputationOutcome] = field(default_factory=list)
    guarded: list[tuple[set[str], set[str]]] = field(default_factory=list)
    deferred: list[tuple[str, str, str]] = field(default_factory=list)

    def ports(self) -> EventPorts:
        def suppress(
            user_id: str, email: str, reason: SuppressionReason, now: float, *, detail: str | None = None
        ) -> None:
            self.suppressed.append((user_id, email, reason))

        def record(outcomes: Any, now: float) -> None:
            self.recorded.extend(outcomes)

        def guard(user_ids: Any, service_ids: Any, now: float) -> None:
            self.guarded.append((set(user_ids), set(service_ids)))

        def defer(service_id: str, address: str, delay_type: str, now: float, *, reported_at: float, **_: Any) -> None:
            self.deferred.append((service_id, address, delay_type))

        return EventPorts(suppress=suppress, record=record, guard=guard, defer=defer)


class _Context:
    function_name = "EventsFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:EventsFunction"
    aws_request_id = "events-test"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


@dataclass
class Email:
    task_id: str
    contact_id: str
    email: str
    message_id: str

    def subtask(self) -> SubtaskModel:
        return SubtaskModel.get(subtask_partition(self.task_id, self.contact_id), self.contact_id, consistent_read=True)


@dataclass
class Campaign:
    """A sent campaign of alice's on svc_a: one sent subtask with an SES message id per recipient."""

    clock: Any
    ports: RecordingPorts
    task_id: str = ""
    emails: list[Email] = field(default_factory=list)
    sqs_ids: int = 0

    def counts(self) -> dict[str, int]:
        counts = TaskModel.get(self.task_id, consistent_read=True).counts
        return {
            name: int(getattr(counts, name) or 0)
            for name in ("delivered", "bounced", "complained", "soft_bounced", "rejected", "sent")
        }

    def notification(self, email: Email, kind: str, *, envelope: str = "sns") -> str:
        tag_list = [("task_id", email.task_id), ("user_id", "alice"), ("service_id", "svc_a")]
        mail = mail_object(email.message_id, "news@shop.example", [email.email], tag_list, self.clock.now())
        record = event_record(kind, mail, self.clock.now() + 5)
        if envelope == "sns":
            return json.dumps(sns_envelope(record, TOPIC, self.clock.now()))
        if envelope == "eventbridge":
            return json.dumps(eventbridge_envelope(record, self.clock.now()))
        return json.dumps(record)

    def deliver(self, *bodies: str, receive_count: int = 1) -> list[str]:
        """One SQS batch through the handler; returns the bodies it reported failed."""
        import events_handler

        messages = []
        for body in bodies:
            self.sqs_ids += 1
            messages.append(
                {
                    "messageId": f"sqs-{self.sqs_ids}",
                    "receiptHandle": f"rh-{self.sqs_ids}",
                    "body": body,
                    "attributes": {"ApproximateReceiveCount": str(receive_count)},
                    "messageAttributes": {},
                    "md5OfBody": "",
                    "eventSource": "aws:sqs",
                    "eventSourceARN": QUEUE,
                    "awsRegion": "us-east-1",
                }
            )
        result = events_handler.lambda_handler({"Records": messages}, _Context())
        failed = {item["itemIdentifier"] for item in result["batchItemFailures"]}
        return [message["body"] for message in messages if message["messageId"] in failed]


@pytest.fixture
def campaign(aws: Settings, clock: Any) -> Iterator[Campaign]:
    import events_handler

    events_handler.runtime.cache_clear()
    ports = RecordingPorts()
    runtime = events_handler.runtime()
    runtime.clock = clock
    runtime.ports = ports.ports()
    now = clock.now()
    seed_user("alice", 100, ["svc_a"], now)
    seed_contacts("alice", 4, now, tags=["news"])
    task = seed_task("alice", now, include=["news"])
    result = Campaign(clock, ports, task.task_id)
    for number in range(4):
        address = f"person{number}@example.org"
        contact_id = contact_id_for(address)
        message_id = f"0100019a-{number:04d}-msg"
        SubtaskModel(
            subtask_partition(task.task_id, contact_id),
            contact_id,
            task_id=task.task_id,
            user_id="alice",
            seq=number,
            email=address,
            template_id="tpl_1",
            service_id="svc_a",
            status=SubtaskStatus.SENT,
            message_id=message_id,
            sent_at=now,
            created_at=now,
        ).save()
        result.emails.append(Email(task.task_id, contact_id, address, message_id))
    task.update(
        actions=[
            TaskModel.status.set(TaskStatus.COMPLETED),
            TaskModel.counts.total.set(4),
            TaskModel.counts.sent.set(4),
        ]
    )
    yield result
    events_handler.runtime.cache_clear()


@pytest.mark.parametrize("envelope", ["sns", "eventbridge"])
def test_a_delivery_is_counted_once_however_often_it_arrives(campaign: Campaign, envelope: str) -> None:
    # Given a sent email
    email = campaign.emails[0]
    delivery = campaign.notification(email, "delivery", envelope=envelope)

    # When SES's Delivery notification arrives, again (at-least-once delivery), then twice in one batch
    failed = campaign.deliver(delivery) + campaign.deliver(delivery) + campaign.deliver(delivery, delivery)

    # Then the subtask records it and the task counts one delivery
    assert failed == []
    subtask = email.subtask()
    assert subtask.ses_events == {"delivery"} and subtask.delivered_at == pytest.approx(campaign.clock.now() + 5)
    assert delivery_state(subtask.ses_events) == "delivery"
    assert subtask.status == SubtaskStatus.SENT  # the dispatcher's state is its own
    assert campaign.counts()["delivered"] == 1
    assert [o.kind for o in campaign.ports.recorded] == ["delivered"]
    assert campaign.ports.guarded == []  # a delivery cannot cross a threshold


def test_a_permanent_bounce_counts_suppresses_and_feeds_the_guard(campaign: Campaign) -> None:
    email = campaign.emails[1]
    bounce = campaign.notification(email, "bounce")

    assert campaign.deliver(bounce) == []
    assert campaign.deliver(bounce) == []
    assert campaign.deliver(bounce, bounce) == []  # twice in one batch: one suppression asked

    subtask = email.subtask()
    assert (subtask.bounce_type, subtask.bounce_subtype) == ("Permanent", "General")
    assert subtask.delivery_detail == "smtp; 550 5.1.1 user unknown"
    assert campaign.counts()["bounced"] == 1
    # Suppression is idempotent by itself: asked on every batch bringing the notification, so a crash
    # between the counted write and the suppression cannot lose it
    assert campaign.ports.suppressed == [("alice", email.email, SuppressionReason.BOUNCED)] * 3
    assert [(o.user_id, o.service_id, o.kind) for o in campaign.ports.recorded] == [("alice", "svc_a", "bounced")]
    assert campaign.ports.guarded == [({"alice"}, {"svc_a"})]


def test_a_transient_bounce_is_recorded_on_the_contact_not_suppressed(campaign: Campaign) -> None:
    email = campaign.emails[2]
    soft = campaign.notification(email, "soft_bounce", envelope="eventbridge")

    assert campaign.deliver(soft, soft) == []

    subtask = email.subtask()
    assert subtask.bounce_type == "Transient" and subtask.ses_events == {"soft_bounce"}
    contact = ContactModel.get("alice", email.contact_id, consistent_read=True)
    assert contact.soft_bounces == 1 and contact.last_soft_bounce_at == pytest.approx(campaign.clock.now() + 5)
    assert contact.status == "subscribed"
    assert campaign.counts()["soft_bounced"] == 1 and campaign.counts()["bounced"] == 0
    assert campaign.ports.suppressed == [] and campaign.ports.recorded == []


def test_a_complaint_before_its_delivery_counts_both_once(campaign: Campaign) -> None:
    # Given SES's complaint simulator: Delivery then Complaint, here arriving the other way round
    email = campaign.emails[3]
    complaint = campaign.notification(email, "complaint")
    delivery = campaign.notification(email, "delivery")

    assert campaign.deliver(complaint) == []
    assert campaign.deliver(delivery) == []
    assert campaign.deliver(complaint, delivery) == []

    subtask = email.subtask()
    assert subtask.ses_events == {"complaint", "delivery"}
    assert delivery_state(subtask.ses_events) == "complaint"
    assert subtask.delivery_detail == "abuse"
    counts = campaign.counts()
    assert (counts["delivered"], counts["complained"]) == (1, 1)
    assert campaign.ports.suppressed == [("alice", email.email, SuppressionReason.COMPLAINED)] * 2
    assert sorted(o.kind for o in campaign.ports.recorded) == ["complained", "delivered"]


def test_events_of_one_email_end_the_same_in_any_order(campaign: Campaign) -> None:
    # A soft bounce, then a permanent one, then a delivery delay, against the reverse order
    first, second = campaign.emails[0], campaign.emails[1]
    kinds = ["soft_bounce", "bounce", "delivery_delay"]
    for kind in kinds:
        assert campaign.deliver(campaign.notification(first, kind)) == []
    for kind in reversed(kinds):
        assert campaign.deliver(campaign.notification(second, kind)) == []

    ends = []
    for email in (first, second):
        subtask = email.subtask()
        ends.append(
            (subtask.ses_events, subtask.bounce_type, subtask.bounce_subtype, delivery_state(subtask.ses_events))
        )
    assert ends[0] == ends[1] == ({"soft_bounce", "bounce", "delivery_delay"}, "Permanent", "General", "bounce")
    counts = campaign.counts()
    assert (counts["bounced"], counts["soft_bounced"]) == (2, 2)


def test_send_reject_and_delivery_delay(campaign: Campaign) -> None:
    sent, rejected, delayed = campaign.emails[0], campaign.emails[1], campaign.emails[2]

    failed = campaign.deliver(
        campaign.notification(sent, "send"),
        campaign.notification(sent, "send"),  # a duplicate Send
        campaign.notification(rejected, "reject"),
        campaign.notification(delayed, "delivery_delay", envelope="eventbridge"),
    )

    assert failed == []
    assert sent.subtask().ses_sent_at is not None
    assert [o.kind for o in campaign.ports.recorded] == ["sent"]  # the rate's denominator, once
    assert rejected.subtask().rejected_at is not None and rejected.subtask().delivery_detail == "Bad content"
    delay = delayed.subtask()
    assert delay.delayed_at is not None
    assert delay.delivery_detail == "TransientCommunicationFailure: smtp; 421 4.4.1 Unable to connect to remote host"
    counts = campaign.counts()
    assert (counts["rejected"], counts["delivered"], counts["bounced"]) == (1, 0, 0)


BAD_BODIES = {
    "not json": "this is not json",
    "a JSON list": "[1, 2]",
    "an SNS subscription confirmation": json.dumps({"Type": "SubscriptionConfirmation", "Message": "confirm"}),
    "an SNS message that is not JSON": json.dumps({"Type": "Notification", "Message": "oops"}),
    "an EventBridge event from elsewhere": json.dumps(
        {"detail-type": "Object Created", "source": "aws.s3", "detail": {}}
    ),
    "no mail": json.dumps({"eventType": "Delivery", "delivery": {}}),
    "no message id": json.dumps({"eventType": "Delivery", "mail": {"destination": []}, "delivery": {}}),
    "a bounce without its type": json.dumps(
        {"eventType": "Bounce", "mail": {"messageId": "0100019a-0000-msg"}, "bounce": {"bouncedRecipients": []}}
    ),
    "a bounce type SES does not have": json.dumps(
        {"eventType": "Bounce", "mail": {"messageId": "0100019a-0000-msg"}, "bounce": {"bounceType": "Soft"}}
    ),
    "a complaint without details": json.dumps({"eventType": "Complaint", "mail": {"messageId": "0100019a-0000-msg"}}),
}


def test_malformed_and_unknown_events_are_dropped_without_failing_the_batch(campaign: Campaign) -> None:
    email = campaign.emails[0]
    ignored = [
        json.dumps({"eventType": "Open", "mail": {"messageId": email.message_id}, "open": {}}),
        json.dumps({"eventType": "Click", "mail": {"messageId": email.message_id}, "click": {}}),
        json.dumps({"eventType": "Bogus", "mail": {"messageId": email.message_id}}),
        json.dumps(  # a Subscription event that does not unsubscribe from all
            {
                "eventType": "Subscription",
                "mail": {"messageId": email.message_id},
                "subscription": {"newTopicPreferences": {"unsubscribeAll": False}},
            }
        ),
    ]
    delivery = campaign.notification(email, "delivery")

    # When a batch mixes them with one good notification
    failed = campaign.deliver(*BAD_BODIES.values(), *ignored, delivery)

    # Then nothing fails, the good one is applied and the others changed nothing
    assert failed == []
    assert email.subtask().ses_events == {"delivery"}
    assert campaign.counts()["delivered"] == 1
    assert all(other.subtask().ses_events is None for other in campaign.emails[1:])


def test_an_event_before_its_subtask_is_retried_then_given_up(campaign: Campaign) -> None:
    # Given events about a campaign email whose subtask is not recorded yet, and one of someone else's
    ghost = Email(campaign.task_id, "ct_ghost", "ghost@example.org", "0100019a-ghost-msg")
    ours = campaign.notification(ghost, "delivery")
    hand_written = json.loads(campaign.notification(ghost, "bounce", envelope="bare"))
    del hand_written["mail"]["tags"]  # SES always sends tags; a file written by hand may have none
    untagged_file = json.dumps(hand_written)
    test_send_tags = [("test_send", "true")]  # how core.api.test_sends tags its emails
    mail = mail_object("0100019a-other-msg", "a@other.example", ["x@example.org"], test_send_tags, 0)
    not_ours = json.dumps(event_record("delivery", mail, 0))

    # Then only the possibly ours are retried (their messages fail), the other is dropped at once
    assert campaign.deliver(ours, untagged_file, not_ours) == [ours, untagged_file]
    # and after MATCH_ATTEMPTS receives they are dropped too
    assert campaign.deliver(ours, untagged_file, receive_count=MATCH_ATTEMPTS) == []
    assert campaign.counts()["delivered"] == 0 and campaign.ports.suppressed == []


def test_a_failing_write_fails_only_its_message_and_counts_once_when_redelivered(
    campaign: Campaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken, fine = campaign.emails[0], campaign.emails[1]
    # DynamoDB refuses every transaction that writes the broken email's subtask (a throttle, an outage)
    connection = transaction_connection()
    real_write = connection.transact_write_items

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if broken.contact_id in json.dumps([args, kwargs], default=str):
            raise TransactWriteError("injected: DynamoDB unavailable")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(connection, "transact_write_items", flaky)
    bad, good = campaign.notification(broken, "delivery"), campaign.notification(fine, "delivery")

    assert campaign.deliver(bad, good) == [bad]
    assert campaign.counts()["delivered"] == 1 and broken.subtask().ses_events is None

    # When SQS delivers the failed one again, DynamoDB answering
    monkeypatch.setattr(connection, "transact_write_items", real_write)
    assert campaign.deliver(bad, good) == []
    assert campaign.counts()["delivered"] == 2
    assert sorted(o.kind for o in campaign.ports.recorded) == ["delivered", "delivered"]


def test_the_sample_events_drive_the_function(campaign: Campaign) -> None:
    """events/events_ses_notifications.json (what `make invoke` runs): its messages name a task this
    account does not hold, so its campaign events wait for their subtasks and the malformed one is dropped."""
    import events_handler

    from tests.integration.test_events import load_event

    event = load_event("events_ses_notifications.json")
    result = events_handler.lambda_handler(event, _Context())

    failed = {item["itemIdentifier"] for item in result["batchItemFailures"]}
    assert failed == {record["messageId"] for record in event["Records"][:-1]}


def test_a_batch_moves_each_task_once_and_takes_repeats_out(
    campaign: Campaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one email's delivery already applied
    first = campaign.emails[0]
    assert campaign.deliver(campaign.notification(first, "delivery")) == []
    connection = transaction_connection()
    real_write = connection.transact_write_items
    transactions: list[list[str]] = []  # per TransactWriteItems, the table of each update

    def counting(*args: Any, **kwargs: Any) -> Any:
        transactions.append([str(update["TableName"]) for update in kwargs["update_items"]])
        return real_write(*args, **kwargs)

    monkeypatch.setattr(connection, "transact_write_items", counting)

    # When a batch brings every email's delivery (the first's again) and one complaint
    bodies = [campaign.notification(email, "delivery") for email in campaign.emails]
    complaint = campaign.notification(campaign.emails[3], "complaint")
    assert campaign.deliver(*bodies, complaint) == []

    # Then the deliveries went in one transaction with one task update, tried again without the
    # repeat; the complaint (a second event of an email in it) in a transaction of its own
    tables = [(t.count("SubtasksTable"), t.count("TasksTable")) for t in transactions]
    assert tables == [(4, 1), (3, 1), (1, 1)]
    counts = campaign.counts()
    assert (counts["delivered"], counts["complained"]) == (4, 1)
    assert sorted(o.kind for o in campaign.ports.recorded) == [
        "complained",
        "delivered",
        "delivered",
        "delivered",
        "delivered",
    ]


def test_requests_per_email_for_a_send_and_its_delivery(campaign: Campaign) -> None:
    from tests.integration.test_scheduler_status import requests_made

    # Given SES's two events for each of the four emails (Send, Delivery), in one batch
    bodies = [campaign.notification(email, kind) for email in campaign.emails for kind in ("send", "delivery")]

    with requests_made() as made:
        assert campaign.deliver(*bodies) == []

    # Then each event is one Query on the index; each Send one UpdateItem; the four deliveries one
    # TransactWriteItems with one task update
    assert sorted(operation for operation, _ in made) == sorted(
        ["Query"] * 8 + ["UpdateItem"] * 4 + ["TransactWriteItems"]
    )
    assert campaign.counts()["delivered"] == 4


def test_counted_events_feed_the_reputation_guard_once(aws: Settings, campaign: Campaign) -> None:
    import events_handler

    from core.deliverability.event_ports import event_ports
    from core.deliverability.reputation import read_window, user_scope
    from core.storage.models import EmailServiceModel, UserModel
    from tests.support.planning import seed_service

    # Given the real reputation counters and guard, with a window of at least 4 sends
    seed_service("svc_a", campaign.clock.now())
    events_handler.runtime().ports = event_ports(aws.model_copy(update={"reputation_min_sends": 4}))
    sends = [campaign.notification(email, "send") for email in campaign.emails]
    bounce = campaign.notification(campaign.emails[0], "bounce")

    # When four sends and one permanent bounce are reported, each twice
    assert campaign.deliver(*sends, *sends) == []
    assert campaign.deliver(bounce, bounce) == []

    # Then the window counts them once (1 bounce in 4 sends), over 4%: tenant and service are held
    window = read_window(user_scope("alice"), campaign.clock.now() + 60, _policy(aws))
    assert (window.sent, window.bounced) == (4, 1)
    assert UserModel.get("alice", consistent_read=True).sending_hold is not None
    assert EmailServiceModel.get("svc_a", consistent_read=True).sending_hold is not None


def _policy(settings: Settings) -> Any:
    from core.deliverability.reputation import ReputationPolicy

    return ReputationPolicy.from_settings(settings.model_copy(update={"reputation_min_sends": 4}))


def test_a_hard_bounce_suppresses_the_address_in_the_tenants_other_queued_tasks(
    aws: Settings, campaign: Campaign
) -> None:
    import events_handler

    from core.deliverability.event_ports import event_ports
    from core.storage.models import SuppressionModel, UserModel
    from core.task_transitions import ACTIVE_PARTITION, active_sort

    # Given the real suppression list, and alice's other task still holding the address queued
    events_handler.runtime().ports = event_ports(aws)
    bounced = campaign.emails[1]
    now = campaign.clock.now()
    other = seed_task("alice", now, include=["news"])
    other.update(
        actions=[
            TaskModel.status.set(TaskStatus.QUEUED),
            TaskModel.active_partition.set(ACTIVE_PARTITION),
            TaskModel.active_sort.set(active_sort("alice", other.task_id)),
            TaskModel.counts.total.set(1),
            TaskModel.counts.queued.set(1),
            TaskModel.quota_reserved.set(1),
        ]
    )
    SubtaskModel(
        subtask_partition(other.task_id, bounced.contact_id),
        bounced.contact_id,
        task_id=other.task_id,
        user_id="alice",
        seq=0,
        email=bounced.email,
        template_id="tpl_1",
        service_id="svc_a",
        status=SubtaskStatus.QUEUED,
        queue_key=f"svc_a#{other.task_id}",
        created_at=now,
    ).save()
    quota_before = int(UserModel.get("alice", consistent_read=True).remaining_quota)

    # When SES reports the permanent bounce, twice
    bounce = campaign.notification(bounced, "bounce")
    assert campaign.deliver(bounce) == [] and campaign.deliver(bounce) == []

    # Then the address is on alice's list, her contact is `bounced`, the other task's email is
    # suppressed and its quota unit refunded, once
    assert SuppressionModel.get("alice", bounced.contact_id, consistent_read=True).reason == "bounced"
    assert ContactModel.get("alice", bounced.contact_id, consistent_read=True).status == "bounced"
    queued = SubtaskModel.get(
        subtask_partition(other.task_id, bounced.contact_id), bounced.contact_id, consistent_read=True
    )
    assert queued.status == SubtaskStatus.SUPPRESSED
    assert int(UserModel.get("alice", consistent_read=True).remaining_quota) == quota_before + 1
    assert int(TaskModel.get(other.task_id, consistent_read=True).counts.suppressed) == 1
    assert campaign.counts()["bounced"] == 1
