"""The one-click unsubscribe link: the contact is unsubscribed, its queued subtasks suppressed
and refunded, forged links refused, and GET (link scanners) changes nothing."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from core.mail.unsubscribe import sign_unsubscribe
from core.settings import Settings
from core.storage.models import ContactModel, SubtaskModel, UserModel
from tests.conftest import ApiClient, FakeClock
from tests.support.dispatching import World, start_scheduler, task


def _token(aws: Settings, subtask: SubtaskModel) -> str:
    return sign_unsubscribe(aws.unsubscribe_signing_key, subtask.user_id, subtask.contact_id, subtask.task_id)


def test_one_click_unsubscribes_and_suppresses_queued_subtasks(api: ApiClient, aws: Settings, clock: FakeClock) -> None:
    start_scheduler(clock.now())
    world = World(aws, clock)
    world.service("svc", sending_rate=1.0)
    first = world.campaign("alice", 3, ["svc"], quota=10)
    victim = sorted(SubtaskModel.scan(), key=lambda s: s.contact_id)[0]
    token = _token(aws, victim)

    page = api.get("/unsubscribe", user=None, query=f"token={token}")
    assert page.status == 200 and "Unsubscribe" in str(page.body)
    assert ContactModel.get("alice", victim.contact_id).status == "subscribed"  # GET changes nothing

    # As a mail client sends it (RFC 8058): a form body
    reply = api.post(
        "/unsubscribe",
        "List-Unsubscribe=One-Click",
        user=None,
        query=f"token={token}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert reply.status == 200
    assert ContactModel.get("alice", victim.contact_id).status == "unsubscribed"
    suppressed = SubtaskModel.get(victim.partition, victim.contact_id)
    assert suppressed.status == "suppressed" and suppressed.queue_key is None
    assert task(first).counts.queued == 2 and task(first).counts.suppressed == 1
    assert UserModel.get("alice").remaining_quota == 10 - 3 + 1
    # the dispatcher sends only the other two
    assert world.tick("svc", budget=59.0).sent == 2
    assert task(first).status == "completed"


def test_forged_token_is_refused_and_changes_nothing(api: ApiClient, aws: Settings, clock: FakeClock) -> None:
    world = World(aws, clock)
    world.service("svc")
    world.campaign("alice", 1, ["svc"])
    (subtask,) = list(SubtaskModel.scan())
    forged = _token(aws, subtask)[:-2] + "AA"

    reply = api.post("/unsubscribe", user=None, query=f"token={forged}")

    assert reply.status == 422 and reply.body["details"][0]["field"] == "token"
    assert ContactModel.get("alice", subtask.contact_id).status == "subscribed"
    assert api.post("/unsubscribe", user=None).status == 422  # no token at all


def test_dispatched_emails_carry_a_working_unsubscribe_link(api: ApiClient, aws: Settings, clock: FakeClock) -> None:
    import email

    from moto.backends import get_backend

    start_scheduler(clock.now())
    world = World(aws, clock)
    world.service("svc")
    world.campaign("alice", 1, ["svc"])
    world.tick("svc")
    backend: Any = get_backend("ses")["123456789012"]["us-east-1"]
    (raw,) = [m.raw_data for m in backend.sent_messages if hasattr(m, "raw_data")]
    message = email.message_from_string(raw)
    link = message["List-Unsubscribe"].split(",")[0].strip().strip("<>")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = parse_qs(urlsplit(link).query)["token"][0]

    assert api.post("/unsubscribe", user=None, query=f"token={token}").status == 200
    (subtask,) = list(SubtaskModel.scan())
    assert ContactModel.get("alice", subtask.contact_id).status == "unsubscribed"
