"""The suppression list (core.suppressions): a suppressed address is skipped as `suppressed` in every
queued task of its tenant with its quota refunded exactly once, never planned again, never claimed
once listed (the claim's check), and other tenants' copies of the address are untouched."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.stub import Stubber

from core.settings import Settings
from core.states import SuppressionReason, TaskStatus
from core.storage.ids import contact_id_for, subtask_partition
from core.storage.models import ContactModel, SubtaskModel, SuppressionModel, TaskModel, UserModel
from core.suppressions import AccountSuppressionList, SuppressOutcome, suppress, suppressed_reasons
from core.task_transitions import move_task
from tests.conftest import FakeClock
from tests.support.dispatching import World, plan_now, seed_sender_and_template, start_scheduler, task
from tests.support.planning import seed_contacts, seed_service, seed_task, seed_user

VICTIM = "person2@example.org"
QUOTA = 100


def _tenant(user_id: str, now: float, tags: list[str], count: int = 5) -> list[str]:
    seed_user(user_id, QUOTA, ["svc"], now)
    seed_sender_and_template(user_id, now)
    return seed_contacts(user_id, count, now, tags=tags)


def _planned(user_id: str, now: float, settings: Settings, clock: FakeClock, **recipients: Any) -> str:
    created = seed_task(user_id, now, **recipients)
    plan_now(created.task_id, settings, clock)
    return created.task_id


def _subtask(task_id: str, email: str) -> SubtaskModel:
    contact_id = contact_id_for(email)
    return SubtaskModel.get(subtask_partition(task_id, contact_id), contact_id, consistent_read=True)


def _world(aws: Settings, clock: FakeClock) -> tuple[str, str, str]:
    """alice: two queued tasks over the same five addresses; bob: one task over the same addresses."""
    now = clock.now()
    seed_service("svc", now, sending_rate=1.0)
    _tenant("alice", now, ["news", "promo"])
    _tenant("bob", now, ["news"])
    first = _planned("alice", now, aws, clock, include=["news"])
    second = _planned("alice", now, aws, clock, include=["promo"])
    others = _planned("bob", now, aws, clock, include=["news"])
    return first, second, others


def test_a_hard_bounce_is_skipped_and_refunded_once_in_every_queued_task_of_the_tenant_only(
    aws: Settings, clock: FakeClock
) -> None:
    # Given
    first, second, others = _world(aws, clock)
    assert UserModel.get("alice").remaining_quota == QUOTA - 10

    # When
    outcome = suppress("alice", VICTIM, SuppressionReason.BOUNCED, clock.now(), detail="550 5.1.1 user unknown")

    # Then
    assert outcome == SuppressOutcome(
        added=True, upgraded=False, reason=SuppressionReason.BOUNCED, contact_changed=True, suppressed_subtasks=2
    )
    for task_id in (first, second):
        skipped = _subtask(task_id, VICTIM)
        assert (skipped.status, skipped.queue_key) == ("suppressed", None)
        counts = task(task_id).counts
        assert (counts.queued, counts.suppressed, task(task_id).quota_refunded) == (4, 1, 1)
    assert UserModel.get("alice").remaining_quota == QUOTA - 10 + 2
    assert ContactModel.get("alice", contact_id_for(VICTIM)).status == "bounced"
    entry = SuppressionModel.get("alice", contact_id_for(VICTIM))
    assert (entry.email, entry.reason, entry.detail) == (VICTIM, "bounced", "550 5.1.1 user unknown")
    # bob's copy of the same address is untouched
    assert _subtask(others, VICTIM).status == "queued"
    assert (task(others).counts.queued, task(others).counts.suppressed, task(others).quota_refunded) == (5, 0, 0)
    assert UserModel.get("bob").remaining_quota == QUOTA - 5
    assert ContactModel.get("bob", contact_id_for(VICTIM)).status == "subscribed"
    assert suppressed_reasons("bob", [contact_id_for(VICTIM)]) == {}

    # When the same bounce is reported again: nothing changes
    again = suppress("alice", VICTIM, SuppressionReason.BOUNCED, clock.now())
    assert again == SuppressOutcome(
        added=False, upgraded=False, reason=SuppressionReason.BOUNCED, contact_changed=False, suppressed_subtasks=0
    )
    assert UserModel.get("alice").remaining_quota == QUOTA - 10 + 2
    assert [task(t).quota_refunded for t in (first, second)] == [1, 1]
    assert SuppressionModel.get("alice", contact_id_for(VICTIM)).detail == "550 5.1.1 user unknown"

    # And a new task of alice never plans the address, by tag or by explicit id
    by_tag = _planned("alice", clock.now(), aws, clock, include=["news"])
    explicit = _planned(
        "alice", clock.now(), aws, clock, contacts=[contact_id_for(VICTIM), contact_id_for("person1@example.org")]
    )
    assert (task(by_tag).counts.queued, task(by_tag).counts.suppressed) == (4, 1)
    assert (task(explicit).counts.queued, task(explicit).counts.suppressed) == (1, 1)
    assert all(s.contact_id != contact_id_for(VICTIM) for t in (by_tag, explicit) for s in _subtasks_of(t))


def _subtasks_of(task_id: str) -> list[SubtaskModel]:
    return [s for s in SubtaskModel.scan(consistent_read=True) if s.task_id == task_id]


def test_the_list_wins_over_a_contact_created_or_resubscribed_after_the_suppression(
    aws: Settings, clock: FakeClock
) -> None:
    # Given an address put on the list before alice had a contact for it
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", QUOTA, ["svc"], now)
    seed_sender_and_template("alice", now)
    assert suppress("alice", VICTIM, SuppressionReason.COMPLAINED, now).contact_changed is False
    # When the contact is created (subscribed) afterwards, and a campaign names it
    seed_contacts("alice", 5, now, tags=["news"])
    assert ContactModel.get("alice", contact_id_for(VICTIM)).status == "subscribed"
    by_tag = _planned("alice", now, aws, clock, include=["news"])
    explicit = _planned("alice", now, aws, clock, contacts=[contact_id_for(VICTIM)])
    # Then it is not planned: the by-tag task counts it suppressed, the explicit-only one has nobody
    assert (task(by_tag).counts.queued, task(by_tag).counts.suppressed) == (4, 1)
    assert (task(explicit).status, task(explicit).reason) == ("rejected", "no_eligible_recipients")
    assert UserModel.get("alice").remaining_quota == QUOTA - 4


def test_an_address_listed_after_planning_is_refused_at_claim_suppressed_and_refunded(
    aws: Settings, clock: FakeClock
) -> None:
    # Given both of alice's tasks queued with the victim, and the entry written while no sweep ran
    # (as between `suppress` writing it and its sweep reaching the tasks)
    start_scheduler(clock.now())
    first, second, others = _world(aws, clock)
    SuppressionModel("alice", contact_id_for(VICTIM), email=VICTIM, reason="bounced", created_at=clock.now()).save()
    ses = boto3.client("sesv2", config=Config(retries={"max_attempts": 1}))

    # When the service sends
    report = World(aws, clock).tick("svc", budget=59.0, ses=ses)

    # Then the victim's claims were refused: suppressed and refunded in alice's tasks, sent to bob
    assert report.suppressed == 2 and report.sent == 4 + 4 + 5
    for task_id in (first, second):
        assert _subtask(task_id, VICTIM).status == "suppressed"
        final = task(task_id)
        assert (final.status, final.counts.sent, final.counts.suppressed, final.quota_refunded) == (
            "completed",
            4,
            1,
            1,
        )
    assert _subtask(others, VICTIM).status == "sent"
    assert UserModel.get("alice").remaining_quota == QUOTA - 10 + 2
    assert task(others).quota_refunded == 0


def test_a_stronger_reason_replaces_a_weaker_one_and_never_the_other_way(aws: Settings, clock: FakeClock) -> None:
    now = clock.now()
    seed_user("alice", QUOTA, [], now)
    seed_contacts("alice", 3, now, tags=["news"])
    contact_id = contact_id_for(VICTIM)

    manual = suppress("alice", VICTIM, SuppressionReason.MANUAL, now)
    assert (manual.added, ContactModel.get("alice", contact_id).status) == (True, "suppressed")
    unsubscribed = suppress("alice", VICTIM, SuppressionReason.UNSUBSCRIBED, now + 1)
    assert (unsubscribed.upgraded, unsubscribed.contact_changed) == (True, True)
    assert ContactModel.get("alice", contact_id).status == "unsubscribed"
    complained = suppress("alice", VICTIM, SuppressionReason.COMPLAINED, now + 2, detail="abuse")
    assert (complained.upgraded, complained.reason) == (True, SuppressionReason.COMPLAINED)
    # weaker reasons later change nothing
    for weaker in (SuppressionReason.BOUNCED, SuppressionReason.UNSUBSCRIBED, SuppressionReason.MANUAL):
        later = suppress("alice", VICTIM, weaker, now + 3)
        assert (later.added, later.upgraded, later.reason, later.contact_changed) == (
            False,
            False,
            SuppressionReason.COMPLAINED,
            False,
        )
    entry = SuppressionModel.get("alice", contact_id)
    assert (entry.reason, entry.detail, entry.created_at, entry.updated_at) == ("complained", "abuse", now, now + 2)
    assert ContactModel.get("alice", contact_id).status == "complained"
    assert suppressed_reasons("alice", [contact_id, contact_id_for("person0@example.org")]) == {
        contact_id: "complained"
    }


def test_bounces_and_complaints_go_to_the_ses_account_list_once_when_mirrored(aws: Settings, clock: FakeClock) -> None:
    ses = boto3.client("sesv2")
    stubber = Stubber(ses)
    stubber.add_response("put_suppressed_destination", {}, {"EmailAddress": VICTIM, "Reason": "BOUNCE"})
    stubber.add_response("put_suppressed_destination", {}, {"EmailAddress": VICTIM, "Reason": "COMPLAINT"})
    mirror = AccountSuppressionList.from_settings(lambda: ses, enabled=True)
    seed_user("alice", QUOTA, [], clock.now())
    with stubber:
        suppress("alice", VICTIM, SuppressionReason.MANUAL, clock.now(), account_list=mirror)  # not mirrored
        suppress("alice", VICTIM, SuppressionReason.BOUNCED, clock.now(), account_list=mirror)
        suppress("alice", VICTIM, SuppressionReason.BOUNCED, clock.now(), account_list=mirror)  # a repeat
        suppress("alice", VICTIM, SuppressionReason.COMPLAINED, clock.now(), account_list=mirror)
    stubber.assert_no_pending_responses()
    assert AccountSuppressionList.from_settings(lambda: ses, enabled=False) is None
    assert TaskModel.count() == 0


def test_a_paused_task_is_swept_too_and_finished_tasks_are_not_read(aws: Settings, clock: FakeClock) -> None:
    # Given alice's first task paused and her second one sent to the end
    start_scheduler(clock.now())
    first, second, _ = _world(aws, clock)
    assert move_task(TaskModel.get(first), TaskStatus.PAUSED, clock.now())
    World(aws, clock).tick("svc", budget=59.0)
    assert task(second).status == "completed"

    # When
    outcome = suppress("alice", VICTIM, SuppressionReason.MANUAL, clock.now())

    # Then the paused task's queued email is suppressed and refunded; the sent one is left alone
    assert outcome.suppressed_subtasks == 1
    assert _subtask(first, VICTIM).status == "suppressed"
    assert (task(first).status, task(first).counts.queued, task(first).quota_refunded) == ("paused", 4, 1)
    assert _subtask(second, VICTIM).status == "sent" and task(second).quota_refunded == 0
