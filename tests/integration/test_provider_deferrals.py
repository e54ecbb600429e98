"""Provider deferrals through the SES events function on in-process moto, with the real ports
(core.deliverability.event_ports): a throttling DeliveryDelay of gmail.com mail sent by service S
tightens S's `gmail` group (level 1, once per step, capped, extended by later delays, restarted
after it expired); a mailbox-full delay, a repeat of the same email and other services change
nothing; GET /api/services shows the groups still tightened."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from core.deliverability.event_ports import event_ports
from core.settings import Settings
from core.states import SubtaskStatus
from core.storage.ids import contact_id_for, subtask_partition
from core.storage.models import EmailServiceModel, SubtaskModel
from local_runner.ses_events import event_record, mail_object, sns_envelope
from tests.conftest import ApiClient
from tests.support.planning import seed_service, seed_task, seed_user

TOPIC = "arn:aws:sns:us-east-1:123456789012:SesEventsTopic"
QUEUE = "arn:aws:sqs:us-east-1:123456789012:SesEventsQueue"
COOLDOWN, STEP, MAX_LEVEL = 1800, 300, 3


class _Context:
    function_name = "EventsFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:EventsFunction"
    aws_request_id = "deferrals-test"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


@dataclass
class Sent:
    """Emails alice's campaign sent through a service, each with its SES message id."""

    clock: Any
    emails: dict[str, tuple[str, str]] = field(default_factory=dict)  # address -> (service_id, message id)
    sqs_ids: int = 0

    def delay(self, address: str, delay_type: str = "IPFailure", *, receive_count: int = 1) -> None:
        """SES's DeliveryDelay notification for the email to `address`, through the handler."""
        import events_handler

        service_id, message_id = self.emails[address]
        tags = [("task_id", "t"), ("user_id", "alice"), ("service_id", service_id)]
        mail = mail_object(message_id, "news@shop.example", [address], tags, self.clock.now() - 5)
        record = event_record("delivery_delay", mail, self.clock.now() - 1, delay_type=delay_type)
        self.sqs_ids += 1
        message = {
            "messageId": f"sqs-{self.sqs_ids}",
            "receiptHandle": f"rh-{self.sqs_ids}",
            "body": json.dumps(sns_envelope(record, TOPIC, self.clock.now())),
            "attributes": {"ApproximateReceiveCount": str(receive_count)},
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": QUEUE,
            "awsRegion": "us-east-1",
        }
        result = events_handler.lambda_handler({"Records": [message]}, _Context())
        assert result["batchItemFailures"] == []


def deferrals(service_id: str) -> dict[str, Any] | None:
    stored = EmailServiceModel.get(service_id, consistent_read=True).domain_deferrals
    return None if stored is None else dict(stored.as_dict() if hasattr(stored, "as_dict") else stored)


@pytest.fixture
def sent(aws: Settings, clock: Any) -> Iterator[Sent]:
    import events_handler

    events_handler.runtime.cache_clear()
    runtime = events_handler.runtime()
    runtime.clock = clock
    policy = {"deferral_cooldown_seconds": COOLDOWN, "deferral_step_seconds": STEP, "deferral_max_level": MAX_LEVEL}
    runtime.ports = event_ports(aws.model_copy(update=policy))
    now = clock.now()
    seed_service("svc_s", now)
    seed_service("svc_t", now)
    seed_user("alice", 100, ["svc_s", "svc_t"], now)
    task = seed_task("alice", now)
    result = Sent(clock)
    addresses = [(f"reader{n}@gmail.com", "svc_s") for n in range(8)]
    addresses += [("reader@googlemail.com", "svc_s"), ("other@gmail.com", "svc_t"), ("someone@yahoo.com", "svc_s")]
    # A company on Google Workspace (the planner found gmail by MX) and a self-hosted one
    addresses += [("ceo@acme.example", "svc_s"), ("it@selfhosted.example", "svc_s")]
    planned_groups = {"ceo@acme.example": "gmail"}
    for number, (address, service_id) in enumerate(addresses):
        contact_id = contact_id_for(address)
        message_id = f"0100019a-{number:04d}-deferral"
        SubtaskModel(
            subtask_partition(task.task_id, contact_id),
            contact_id,
            task_id=task.task_id,
            user_id="alice",
            seq=number,
            email=address,
            template_id="tpl_1",
            service_id=service_id,
            status=SubtaskStatus.SENT,
            message_id=message_id,
            sent_at=now,
            created_at=now,
            group=planned_groups.get(address),
        ).save()
        result.emails[address] = (service_id, message_id)
    yield result
    events_handler.runtime.cache_clear()


def test_a_throttling_delay_tightens_the_group_once_per_step_up_to_the_cap(sent: Sent) -> None:
    start = sent.clock.now()
    # When SES reports an IPFailure delay of gmail.com mail sent by svc_s (its item has no map yet)
    sent.delay("reader0@gmail.com")
    # Then svc_s's gmail group is at level 1 for the cooldown
    assert deferrals("svc_s") == {"gmail": {"level": 1, "since": start, "until": start + COOLDOWN}}

    # When another gmail address (googlemail.com is Gmail too) is delayed within the step
    sent.clock.advance(STEP - 1)
    sent.delay("reader@googlemail.com", "TransientCommunicationFailure")
    # Then the level stays, and the cooldown runs from the later delay
    assert deferrals("svc_s") == {"gmail": {"level": 1, "since": start, "until": sent.clock.now() + COOLDOWN}}

    # When delays keep coming a step apart, the level rises by one each time, up to the cap
    levels = []
    for number in (1, 2, 3, 4):
        sent.clock.advance(STEP)
        sent.delay(f"reader{number}@gmail.com", "SpamDetected")
        entry = (deferrals("svc_s") or {})["gmail"]
        levels.append(entry["level"])
        assert entry["until"] == sent.clock.now() + COOLDOWN
    assert levels == [2, 3, 3, 3]
    # And the other service, and the other groups, are untouched
    assert deferrals("svc_t") is None
    assert set(deferrals("svc_s") or {}) == {"gmail"}


def test_a_mailbox_full_or_ses_internal_delay_changes_nothing(sent: Sent) -> None:
    # When the delays are the recipient's full mailbox and SES's own failure
    sent.delay("reader0@gmail.com", "MailboxFull")
    sent.delay("reader1@gmail.com", "InternalFailure")
    # Then no group is tightened (the emails' delays are still recorded on their subtasks)
    assert deferrals("svc_s") is None
    _, message_id = sent.emails["reader0@gmail.com"]
    found = next(SubtaskModel.by_message.query(message_id))
    subtask = SubtaskModel.get(found.partition, found.contact_id, consistent_read=True)
    assert subtask.ses_events == {"delivery_delay"}


def test_each_service_and_group_is_tightened_on_its_own(sent: Sent) -> None:
    start = sent.clock.now()
    # When svc_t's gmail mail and svc_s's yahoo mail are delayed
    sent.delay("other@gmail.com")
    sent.delay("someone@yahoo.com")
    # Then each is tightened on its own service only
    assert deferrals("svc_t") == {"gmail": {"level": 1, "since": start, "until": start + COOLDOWN}}
    assert deferrals("svc_s") == {"yahoo": {"level": 1, "since": start, "until": start + COOLDOWN}}


def test_a_domain_grouped_with_gmail_by_mx_tightens_gmail_and_an_unknown_one_itself(sent: Sent) -> None:
    start = sent.clock.now()
    # When mail to a company received by Gmail's servers is delayed
    sent.delay("ceo@acme.example")
    # Then gmail is tightened (it is Gmail that throttles)
    assert deferrals("svc_s") == {"gmail": {"level": 1, "since": start, "until": start + COOLDOWN}}
    # and a self-hosted domain's delay tightens that domain alone
    sent.delay("it@selfhosted.example")
    stored = deferrals("svc_s") or {}
    assert set(stored) == {"gmail", "selfhosted.example"} and stored["gmail"]["level"] == 1


def test_a_repeat_of_the_same_email_counts_once_but_an_sqs_redelivery_asks_again(sent: Sent) -> None:
    start = sent.clock.now()
    sent.delay("reader0@gmail.com")
    # When the same notification comes again (SNS delivers at least once) after a step
    sent.clock.advance(STEP)
    sent.delay("reader0@gmail.com")
    # Then the email's delay was counted once: no raise, no extension
    assert deferrals("svc_s") == {"gmail": {"level": 1, "since": start, "until": start + COOLDOWN}}
    # When SQS delivers it again (its first processing may have failed after the gate)
    sent.delay("reader0@gmail.com", receive_count=2)
    # Then it is asked again (at most one extra raise, only for a redelivery a step later)
    assert (deferrals("svc_s") or {})["gmail"]["level"] == 2


def test_an_expired_deferral_restarts_at_level_one_and_expired_groups_are_cleared(sent: Sent) -> None:
    sent.delay("someone@yahoo.com")
    sent.delay("reader0@gmail.com")
    sent.clock.advance(STEP)
    sent.delay("reader1@gmail.com")
    assert (deferrals("svc_s") or {})["gmail"]["level"] == 2
    # When both have expired and gmail is delayed again
    sent.clock.advance(COOLDOWN)
    sent.delay("reader2@gmail.com")
    # Then gmail starts again at level 1, and the expired yahoo entry is gone
    now = sent.clock.now()
    assert deferrals("svc_s") == {"gmail": {"level": 1, "since": now, "until": now + COOLDOWN}}


def test_the_service_list_shows_the_groups_still_tightened(sent: Sent, api: ApiClient) -> None:
    # Given gmail tightened to level 2 on svc_s, and yahoo tightened but expired since
    sent.delay("someone@yahoo.com")
    sent.clock.advance(STEP)
    sent.delay("reader0@gmail.com")
    sent.clock.advance(STEP)
    sent.delay("reader1@gmail.com")
    sent.clock.advance(COOLDOWN - STEP)
    # When the admin lists the services
    reply = api.get("/api/services")
    # Then svc_s shows gmail at level 2 until its cooldown ends, and svc_t nothing
    assert reply.status == 200
    by_id = {service["service_id"]: service for service in reply.body["services"]}
    until = (deferrals("svc_s") or {})["gmail"]["until"]
    assert by_id["svc_s"]["domain_deferrals"] == {"gmail": {"level": 2, "until": _iso(until)}}
    assert by_id["svc_t"]["domain_deferrals"] == {}


def _iso(epoch: float) -> str:
    from core.clock import iso

    return iso(epoch)
