"""Test sends: one rendered message of the caller's template to one address, through one of the
caller's services, at once (`POST /api/templates/{template_id}/test-send`; docs/test-sends.md).

What a test send shares with a campaign email: the render (core.mail.rendering), the raw message
(core.mail.mime), the service's region and configuration set, and the service's daily quota
(core.dispatch.service_quota.reserve_block, the dispatchers' own conditional ADD). What it does not
touch: subtasks, task counters, the user's `remaining_quota`, the per-minute sent counters, the
dispatcher's lease and pace; the per-user rate limit (core.api.rate_limits.take_test_send) bounds it
instead. Its unsubscribe link is inert: it names no contact and its host never resolves, so no
click on a test message can unsubscribe anyone."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.api.auth import Caller
from core.api.ownership import load_contacts, load_sender, load_services, tenant_user
from core.api.rate_limits import take_test_send
from core.api.test_send_schemas import TestSendIn, TestSendOut
from core.clock import Clock, iso
from core.dispatch.outcomes import outcome_of
from core.dispatch.send_errors import SendError, SendErrorClass, classify_send_error
from core.dispatch.sender import ses_request
from core.dispatch.service_quota import release, reserve_block
from core.dispatch.warmup import service_day_quota
from core.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable, TooManyRequests
from core.mail.mime import build_campaign_message
from core.mail.rendering import SAMPLE_CONTACT, load_template, render_template
from core.planning.routing import SECONDS_PER_DAY, NoServiceAvailable
from core.states import ContactStatus
from core.storage.ids import contact_id_for
from core.storage.models import EmailServiceModel, SenderModel, SuppressionModel, UserModel

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "[TEST] "
# RFC 2606: `.invalid` never resolves. The template's {{ unsubscribe_url }} and List-Unsubscribe
# show where the link goes without being one that works.
INERT_UNSUBSCRIBE_URL = "https://example.invalid/unsubscribe?test-send=1"
TEST_SEND_HEADERS = {"X-EDM-Test-Send": "true"}
# SES events carry the tags: a test send's bounce or complaint has no subtask and no task.
TEST_SEND_TAGS = [{"Name": "test_send", "Value": "true"}]
SES_DAILY_QUOTA_RETRY_SECONDS = 3600  # SES's 24-hour quota is rolling: no exact time to give


class Suppressed(Conflict):
    code = "suppressed"


class NoSender(Conflict):
    code = "no_sender"


class SendingHeld(Conflict):
    code = "sending_held"


class ServiceCannotSend(Conflict):
    code = "service_cannot_send"


class SendRejected(Conflict):
    """SES refused this message or this account cannot send (send_errors' PERMANENT, ACCOUNT)."""

    code = "send_rejected"


class DailyQuotaExhausted(TooManyRequests):
    code = "daily_quota_exhausted"


class SesThrottled(TooManyRequests):
    code = "ses_throttled"


class SesUnavailable(ServiceUnavailable):
    code = "ses_unavailable"


class SendOutcomeUnknown(ServiceUnavailable):
    code = "send_outcome_unknown"


@dataclass(frozen=True)
class TestSendDeps:
    __test__ = False  # not a pytest class, whatever imports it

    clock: Clock
    ses_for_region: Callable[[str], Any]  # an SES v2 client of a region, without botocore retries
    render_budget: float  # seconds of wall clock for the render
    min_interval: float  # seconds between two test sends of a user
    per_hour: int  # test sends of a user per clock hour


def send_test_email(caller: Caller, template_id: str, request: TestSendIn, deps: TestSendDeps) -> TestSendOut:
    """Checks everything that needs no write first (tenant, template, contact, recipient, sender,
    services) and renders, then takes the user's rate slot, reserves one unit of a service's daily
    quota and sends. A unit SES did not take is given back; the rate slot is not."""
    user = tenant_user(caller)
    template = load_template(caller.user_id, template_id)
    contact = _render_contact(caller.user_id, request)
    recipient = str(request.email)
    _refuse_suppressed(caller.user_id, recipient)
    sender = _sender(caller.user_id, request.sender_id)
    if user.sending_hold:
        raise SendingHeld(f"sending is held for your account ({user.sending_hold}); an administrator resumes it")
    candidates = _candidate_services(user, request.service_id)

    # A render costs what a preview does (unlimited): a template that fails spends no rate slot.
    rendered = render_template(template, contact, deps.render_budget)
    now = deps.clock.now()
    take_test_send(user.user_id, now, deps.min_interval, deps.per_hour)
    service = _reserve_one(candidates, now)
    try:
        raw = build_campaign_message(
            sender_name=sender.name,
            sender_email=sender.email,
            recipient_name=None,
            recipient_email=recipient,
            rendered=dataclasses.replace(rendered, subject=SUBJECT_PREFIX + rendered.subject),
            message_id_domain=service.from_domain or sender.email.rpartition("@")[2],
            unsubscribe_url=INERT_UNSUBSCRIBE_URL,
            extra_headers=TEST_SEND_HEADERS,
            sent_at=now,
        )
    except ValueError as error:  # nothing was sent: the unit goes back
        release(service.service_id, 1, now)
        raise InvalidInput("email" if str(error).startswith("recipient") else "subject", str(error)) from error
    message_id = _send(deps.ses_for_region(service.region), service, sender.email, recipient, raw, now)
    log.info(
        "test send",
        extra={"user_id": user.user_id, "template_id": template.template_id, "service_id": service.service_id},
    )
    return TestSendOut(message_id=message_id, service_id=service.service_id, sent_at=iso(now))


def _render_contact(user_id: str, request: TestSendIn) -> dict[str, Any]:
    """The fields the template renders with: the caller's contact (404 if not theirs) or a sample
    with no attributes (rendered strictly, as preview does: a template that needs one is 422)."""
    if request.contact_id is None:
        contact: dict[str, Any] = {
            "email": str(request.email),
            "name": SAMPLE_CONTACT["name"],
            "attributes": {},
        }
    else:
        found = load_contacts(user_id, [request.contact_id]).get(request.contact_id)
        if found is None:
            raise NotFound("contact", request.contact_id, field="contact_id")
        contact = {"email": found.email, "name": found.name, "attributes": found.attributes}
    contact["unsubscribe_url"] = INERT_UNSUBSCRIBE_URL
    return contact


def _refuse_suppressed(user_id: str, email: str) -> None:
    """An address on the caller's suppression list, or a contact of theirs that is no longer
    subscribed, gets nothing, test or not."""
    contact_id = contact_id_for(email)
    reason: str | None = None
    try:
        reason = SuppressionModel.get(user_id, contact_id, consistent_read=True, attributes_to_get=["reason"]).reason
    except SuppressionModel.DoesNotExist:
        contact = load_contacts(user_id, [contact_id]).get(contact_id)
        if contact is not None and contact.status != ContactStatus.SUBSCRIBED:
            reason = str(contact.status)
    if reason is not None:
        why = f"the address is suppressed ({reason})"
        raise Suppressed(f"email: {why}", [{"field": "email", "reason": why}])


def _sender(user_id: str, sender_id: str | None) -> SenderModel:
    if sender_id is not None:
        return load_sender(user_id, sender_id)
    first = next(iter(SenderModel.query(user_id, limit=1, consistent_read=True)), None)
    if first is None:
        why = "you have no sender; create one (POST /api/senders)"
        raise NoSender(f"sender_id: {why}", [{"field": "sender_id", "reason": why}])
    return first


def cannot_send(service: EmailServiceModel) -> str | None:
    """Why a service cannot take a send now (None: it can), quota aside."""
    if not service.enabled:
        return "disabled"
    if not service.is_healthy:
        return f"unhealthy ({service.health_reason or 'no reason recorded'})"
    if service.sending_hold:
        return f"held ({service.sending_hold})"
    return None


def _candidate_services(user: UserModel, service_id: str | None) -> list[EmailServiceModel]:
    """The asked-for service, or the caller's services that can send now, in the order assigned."""
    assigned = list(dict.fromkeys(user.service_ids or []))
    if service_id is not None:
        service = load_services([service_id]).get(service_id) if service_id in assigned else None
        if service is None:  # not the caller's: as unknown
            raise NotFound("service", service_id, field="service_id")
        why = cannot_send(service)
        if why is not None:
            raise ServiceCannotSend(
                f"service_id: the service cannot send now: {why}", [{"field": "service_id", "reason": why}]
            )
        return [service]
    found = load_services(assigned)
    services = [found[s] for s in assigned if s in found]
    usable = [service for service in services if cannot_send(service) is None]
    if not usable:
        reasons = "; ".join(f"{s.service_id}: {cannot_send(s)}" for s in services) or "none is assigned to you"
        raise NoServiceAvailable(f"none of your email services can send now ({reasons})")
    return usable


def _reserve_one(candidates: list[EmailServiceModel], now: float) -> EmailServiceModel:
    """The first candidate with a unit of today's quota left, that unit reserved."""
    for service in candidates:
        if reserve_block(service.service_id, service_day_quota(service, now).effective, 1, now):  # ramp applied
            return service
    retry_after = SECONDS_PER_DAY - int(now) % SECONDS_PER_DAY
    names = ", ".join(service.service_id for service in candidates)
    raise DailyQuotaExhausted(f"today's quota is used up on {names}; it renews at 00:00 UTC", retry_after)


def _send(ses: Any, service: EmailServiceModel, sender_email: str, recipient: str, raw: bytes, now: float) -> str:
    request = ses_request(sender_email, recipient, raw, service.configuration_set, TEST_SEND_TAGS)
    try:
        return str(ses.send_email(**request)["MessageId"])
    except (ClientError, BotoCoreError) as error:
        failure = classify_send_error(error)
        if not outcome_of(failure).quota_used:
            release(service.service_id, 1, now)
        raise _send_failure(failure, service.service_id) from error


_FAILURES: Mapping[SendErrorClass, Callable[[str], Exception]] = {
    SendErrorClass.THROTTLED: lambda why: SesThrottled(f"SES throttled the send ({why}); retry", 1),
    SendErrorClass.DAILY_QUOTA: lambda why: DailyQuotaExhausted(
        f"the SES account's 24-hour quota is used up ({why})", SES_DAILY_QUOTA_RETRY_SECONDS
    ),
    SendErrorClass.ACCOUNT: lambda why: SendRejected(f"the service's SES account cannot send: {why}"),
    SendErrorClass.PERMANENT: lambda why: SendRejected(f"SES refused the message: {why}"),
    SendErrorClass.TRANSIENT: lambda why: SesUnavailable(f"SES did not answer ({why}); retry"),
}


def _send_failure(failure: SendError, service_id: str) -> Exception:
    """What the caller is told, by the class core.dispatch.send_errors gives the SES error."""
    why = f"{failure.code}: {failure.message}" if failure.message else failure.code
    if failure.may_have_been_sent:
        return SendOutcomeUnknown(
            f"the reply from SES was lost ({why}): it may have accepted the message on {service_id}; "
            "check the inbox before sending again"
        )
    return _FAILURES[failure.error_class](why)
