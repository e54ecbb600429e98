"""Test sends through the API handler on moto's SES: one rendered message to one address through one
of the caller's services, counted in that service's daily quota only; rate-limited per user;
suppressed addresses, other tenants' items and bad input refused with nothing sent or counted."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

import boto3
import pytest
from moto.backends import get_backend

from core.clock import utc_day
from core.storage.ids import contact_id_for
from core.storage.models import EmailServiceModel, ServiceUsageModel, SubtaskModel, SuppressionModel, UserModel
from tests.conftest import ApiClient, FakeClock
from tests.integration.given import assert_rejected, given_contacts, given_service, given_template, given_user
from tests.support.planning import PlannerDriver

TO = "qa@alice.example.org"


def _sender(api: ApiClient, user: str, address: str | None = None) -> str:
    body = {"email": address or f"news@{user}.example.com", "name": "News"}
    reply = api.post("/api/senders", body, user=user)
    assert reply.status == 201, reply.body
    return str(reply.body["sender_id"])


def _sent(region: str = "us-east-1") -> list[EmailMessage]:
    backend: Any = get_backend("ses")["123456789012"][region]
    return [
        email.message_from_string(m.raw_data, policy=email.policy.default)  # type: ignore[misc]
        for m in backend.sent_messages
        if hasattr(m, "raw_data")
    ]


def _used(service_id: str, clock: FakeClock) -> int:
    try:
        return int(ServiceUsageModel.get(service_id, utc_day(clock.now()), consistent_read=True).used)
    except ServiceUsageModel.DoesNotExist:
        return 0


def _test_send(api: ApiClient, template: str, user: str = "alice", **body: Any) -> Any:
    return api.post(f"/api/templates/{template}/test-send", {"email": TO, **body}, user=user)


@pytest.fixture
def alice(api: ApiClient) -> dict[str, Any]:
    """A tenant with two services, a sender, a template using a contact's fields and the unsubscribe
    link, and one contact."""
    services = [given_service(api, "ses-a", daily_quota=50), given_service(api, "ses-b", daily_quota=50)]
    given_user(api, "alice", quota=100, service_ids=services)
    (contact,) = given_contacts(
        api, "alice", {"email": "ada@example.org", "name": "Ada", "attributes": {"city": "London"}}
    )
    template = given_template(
        api,
        "alice",
        subject="Hello {{ name }}",
        html="<p>Hi {{ name }} from {{ city | default('nowhere') }}</p><a href='{{ unsubscribe_url }}'>leave</a>",
        text="Hi {{ name }} from {{ city | default('nowhere') }}. Leave: {{ unsubscribe_url }}",
    )
    return {"services": services, "sender": _sender(api, "alice"), "template": template, "contact": contact}


def test_a_test_send_is_the_rendered_template_counted_only_in_the_services_quota(
    api: ApiClient, planner: PlannerDriver, clock: FakeClock, alice: dict[str, Any]
) -> None:
    # Given a campaign of alice's planned (its quota reserved, its subtasks queued)
    given_contacts(api, "alice", *({"email": f"r{n}@example.org", "tags": ["news"]} for n in range(3)))
    task = {
        "name": "news",
        "sender_id": alice["sender"],
        "templates": [alice["template"]],
        "recipient_rule": {"type": "tag_based", "include_tags": ["news"]},
    }
    created = api.post("/api/tasks", task, user="alice")
    assert created.status == 201, created.body
    planner.drain()
    task_before = api.get(f"/api/tasks/{created.body['task_id']}", user="alice").body
    quota_before = UserModel.get("alice").remaining_quota
    assert quota_before == 100 - 3

    # When alice test-sends the template rendered for her contact
    reply = _test_send(api, alice["template"], contact_id=alice["contact"])

    # Then SES took one message: to the given address, rendered for the contact, marked as a test
    assert reply.status == 200, reply.body
    (message,) = _sent()
    assert message["To"] == TO
    assert message["From"] == "News <news@alice.example.com>"
    assert message["Subject"] == "[TEST] Hello Ada"
    assert message["X-EDM-Test-Send"] == "true"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert "Hi Ada from London" in text.get_content()
    assert "Hi Ada from London" in html.get_content()
    # and its unsubscribe link, in the header and the body, can unsubscribe no one
    link = message["List-Unsubscribe"].strip("<>")
    assert link.startswith("https://example.invalid/") and "token=" not in link
    assert link in text.get_content()
    # The reply names SES's message id, the service and the time
    backend: Any = get_backend("ses")["123456789012"]["us-east-1"]
    assert reply.body == {
        "message_id": backend.sent_messages[-1].id,
        "service_id": reply.body["service_id"],
        "sent_at": "2026-11-30T00:53:20Z",
    }
    # The service's daily quota counts it; the user's quota and the task's stats do not
    assert reply.body["service_id"] == alice["services"][0]
    assert _used(alice["services"][0], clock) == 1 and _used(alice["services"][1], clock) == 0
    assert UserModel.get("alice").remaining_quota == quota_before
    assert api.get(f"/api/tasks/{created.body['task_id']}", user="alice").body == task_before
    assert {s.status for s in SubtaskModel.scan()} == {"queued"}
    assert all(s.message_id is None for s in SubtaskModel.scan())


def test_without_a_contact_a_sample_renders_and_the_service_asked_for_is_used(
    api: ApiClient, clock: FakeClock, alice: dict[str, Any]
) -> None:
    second = alice["services"][1]
    reply = _test_send(api, alice["template"], service_id=second, sender_id=alice["sender"])

    assert reply.status == 200, reply.body
    assert reply.body["service_id"] == second
    (message,) = _sent()
    assert message["Subject"] == "[TEST] Hello Sample"
    body = message.get_body(("plain",))
    assert body is not None and "Hi Sample from nowhere" in body.get_content()
    assert _used(second, clock) == 1 and _used(alice["services"][0], clock) == 0


def test_test_sends_are_rate_limited_per_user_with_retry_after(
    api: ApiClient, clock: FakeClock, alice: dict[str, Any]
) -> None:
    import api_context

    settings = api_context.deps().settings
    api_context.deps().settings = settings.model_copy(
        update={"test_send_interval_seconds": 10, "test_sends_per_hour": 3}
    )
    clock.current = (int(clock.now()) // 3600 + 1) * 3600 + 400.0  # 400 s into a clock hour
    assert _test_send(api, alice["template"]).status == 200

    # A second one 4 s later is too soon: 429 with the seconds left, nothing sent or counted
    clock.advance(4)
    reply = _test_send(api, alice["template"])
    assert reply.status == 429, reply.body
    assert reply.headers["Retry-After"] == "6"
    assert len(_sent()) == 1 and _used(alice["services"][0], clock) == 1

    # Another tenant is not held back by alice's limit
    given_user(api, "bob", service_ids=alice["services"])
    bob_template = given_template(api, "bob")
    _sender(api, "bob")
    assert _test_send(api, bob_template, user="bob").status == 200

    clock.advance(6)
    assert _test_send(api, alice["template"]).status == 200
    clock.advance(10)
    assert _test_send(api, alice["template"]).status == 200
    # The fourth in the hour waits for the next hour
    clock.advance(10)
    reply = _test_send(api, alice["template"])
    assert reply.status == 429, reply.body
    assert reply.headers["Retry-After"] == str(3600 - 400 - 30)
    clock.advance(3600 - 400 - 30)
    assert _test_send(api, alice["template"]).status == 200
    assert len(_sent()) == 5


def test_a_template_the_sample_cannot_render_is_422_and_spends_nothing(
    api: ApiClient, clock: FakeClock, alice: dict[str, Any]
) -> None:
    template = given_template(api, "alice", html="<p>{{ coupon }}</p>")

    assert_rejected(_test_send(api, template), "html")
    assert _sent() == [] and _used(alice["services"][0], clock) == 0
    assert UserModel.get("alice").last_test_send_at is None  # no rate slot spent
    # With a contact that has the attribute it renders
    (contact,) = given_contacts(api, "alice", {"email": "bea@example.org", "attributes": {"coupon": "XMAS-25"}})
    assert _test_send(api, template, contact_id=contact).status == 200
    (message,) = _sent()
    html = message.get_body(("html",))
    assert html is not None and "XMAS-25" in html.get_content()


@pytest.mark.parametrize("reason", ["bounced", "complained", "unsubscribed", "manual"])
def test_a_suppressed_address_gets_nothing(
    api: ApiClient, clock: FakeClock, alice: dict[str, Any], reason: str
) -> None:
    SuppressionModel("alice", contact_id_for(TO), email=TO, reason=reason, created_at=clock.now()).save()

    reply = _test_send(api, alice["template"])

    assert_rejected(reply, "email", status=409)
    assert reply.body["error"] == "suppressed" and reason in reply.body["message"]
    assert _sent() == [] and _used(alice["services"][0], clock) == 0
    # The same address on another tenant's list changes nothing for alice
    SuppressionModel.get("alice", contact_id_for(TO)).delete()
    SuppressionModel("bob", contact_id_for(TO), email=TO, reason=reason, created_at=clock.now()).save()
    assert _test_send(api, alice["template"]).status == 200


def test_an_unsubscribed_contact_address_gets_nothing(api: ApiClient, clock: FakeClock, alice: dict[str, Any]) -> None:
    from core.storage.models import ContactModel

    ContactModel("alice", alice["contact"]).update(actions=[ContactModel.status.set("unsubscribed")])

    reply = _test_send(api, alice["template"], email="Ada@Example.org")

    assert_rejected(reply, "email", status=409)
    assert _sent() == [] and _used(alice["services"][0], clock) == 0


def test_another_tenants_items_are_not_found(api: ApiClient, clock: FakeClock, alice: dict[str, Any]) -> None:
    bob_service = given_service(api, "ses-bob")
    given_user(api, "bob", service_ids=[bob_service])
    bob_template = given_template(api, "bob")
    _sender(api, "bob")

    # bob names alice's template, contact, sender and service: each is 404, naming the field
    assert _test_send(api, alice["template"], user="bob").status == 404
    assert_rejected(_test_send(api, bob_template, user="bob", contact_id=alice["contact"]), "contact_id", 404)
    assert_rejected(_test_send(api, bob_template, user="bob", sender_id=alice["sender"]), "sender_id", 404)
    assert_rejected(_test_send(api, bob_template, user="bob", service_id=alice["services"][0]), "service_id", 404)
    assert _sent() == []
    assert all(_used(service, clock) == 0 for service in [*alice["services"], bob_service])
    # A caller without a user record may not send at all
    assert _test_send(api, alice["template"], user="stranger").status == 403
    assert _sent() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"email": "a@b@example.org"}, "email"),
        ({"email": "ünïcode@example.org"}, "email"),
        ({"email": "x@example.org\r\nBcc: y@example.org"}, "email"),
        ({}, "email"),
        ({"email": TO, "contact_id": "ct/../x"}, "contact_id"),
        ({"email": TO, "sender_id": ""}, "sender_id"),
        ({"email": TO, "service_id": 5}, "service_id"),
        ({"email": TO, "bcc": "y@example.org"}, "bcc"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_sends_nothing(
    api: ApiClient, clock: FakeClock, alice: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    reply = api.post(f"/api/templates/{alice['template']}/test-send", body, user="alice")

    assert_rejected(reply, field)
    assert _sent() == [] and _used(alice["services"][0], clock) == 0
    assert UserModel.get("alice").last_test_send_at is None  # no rate slot taken either


def test_services_that_cannot_send_are_skipped_or_refused(
    api: ApiClient, clock: FakeClock, alice: dict[str, Any]
) -> None:
    first, second = alice["services"]
    EmailServiceModel(first).update(actions=[EmailServiceModel.sending_hold.set("bounce_rate")])

    # Asked for by id, a held service is 409 naming why
    reply = _test_send(api, alice["template"], service_id=first)
    assert_rejected(reply, "service_id", 409)
    assert reply.body["error"] == "service_cannot_send" and "bounce_rate" in reply.body["message"]
    # Otherwise the first one that can send is used
    reply = _test_send(api, alice["template"])
    assert reply.status == 200 and reply.body["service_id"] == second

    # None can: 409 no_service with each one's reason, nothing sent
    clock.advance(3600)
    assert api.patch(f"/api/services/{second}", {"enabled": False}).status == 200
    reply = _test_send(api, alice["template"])
    assert reply.status == 409 and reply.body["error"] == "no_service", reply.body
    assert f"{first}: held (bounce_rate)" in reply.body["message"] and f"{second}: disabled" in reply.body["message"]
    EmailServiceModel(first).update(
        actions=[EmailServiceModel.sending_hold.remove(), EmailServiceModel.is_healthy.set(False)]
    )
    reply = _test_send(api, alice["template"], service_id=first)
    assert reply.status == 409 and "unhealthy" in reply.body["message"], reply.body
    assert len(_sent()) == 1


def test_a_service_out_of_daily_quota_is_skipped_and_none_left_is_429(
    api: ApiClient, clock: FakeClock, alice: dict[str, Any]
) -> None:
    first, second = alice["services"]
    day = utc_day(clock.now())
    ServiceUsageModel(first, day, used=50).save()

    reply = _test_send(api, alice["template"])
    assert reply.status == 200 and reply.body["service_id"] == second
    assert _used(first, clock) == 50 and _used(second, clock) == 1

    ServiceUsageModel(second, day, used=50).save()
    clock.advance(60)
    reply = _test_send(api, alice["template"])
    assert reply.status == 429 and reply.body["error"] == "daily_quota_exhausted", reply.body
    midnight = (int(clock.now()) // 86_400 + 1) * 86_400
    assert reply.headers["Retry-After"] == str(midnight - int(clock.now()))
    assert _used(first, clock) == 50 and _used(second, clock) == 50  # never past the quota
    assert len(_sent()) == 1


def test_ses_refusing_the_message_gives_the_quota_unit_back(
    api: ApiClient, clock: FakeClock, alice: dict[str, Any]
) -> None:
    # A service in another region, where alice's sender identity is no longer verified (assigning
    # the service asked SES to verify it there; it was deleted since): SES rejects the send
    elsewhere = given_service(api, "ses-eu", region="eu-west-1")
    api.put("/api/users/alice/services", {"service_ids": [*alice["services"], elsewhere]})
    eu = boto3.client("sesv2", region_name="eu-west-1")
    for identity in eu.list_email_identities()["EmailIdentities"]:
        eu.delete_email_identity(EmailIdentity=identity["IdentityName"])

    reply = _test_send(api, alice["template"], service_id=elsewhere)

    assert reply.status == 409 and reply.body["error"] == "send_rejected", reply.body
    assert "MessageRejected" in reply.body["message"]
    assert _used(elsewhere, clock) == 0
    assert _sent("eu-west-1") == [] and _sent() == []


def test_no_sender_or_a_held_tenant_is_409(api: ApiClient, clock: FakeClock, alice: dict[str, Any]) -> None:
    given_user(api, "carol", service_ids=alice["services"])
    carol_template = given_template(api, "carol")
    reply = _test_send(api, carol_template, user="carol")
    assert_rejected(reply, "sender_id", 409)
    assert reply.body["error"] == "no_sender"

    UserModel("alice").update(actions=[UserModel.sending_hold.set("complaint_rate")])
    reply = _test_send(api, alice["template"])
    assert reply.status == 409 and reply.body["error"] == "sending_held", reply.body
    assert _sent() == [] and all(_used(service, clock) == 0 for service in alice["services"])


def test_a_repeat_with_the_same_idempotency_key_sends_once(
    api: ApiClient, clock: FakeClock, alice: dict[str, Any]
) -> None:
    path = f"/api/templates/{alice['template']}/test-send"
    key = {"Idempotency-Key": "qa-1"}
    first = api.post(path, {"email": TO}, user="alice", headers=key)
    clock.advance(60)  # past the rate limit: only the key stops a second send
    again = api.post(path, {"email": TO}, user="alice", headers=key)

    assert first.status == again.status == 200
    assert again.body == first.body and again.headers.get("Idempotent-Replayed") == "true"
    assert len(_sent()) == 1 and _used(alice["services"][0], clock) == 1
