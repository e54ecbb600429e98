"""The planner: recipients resolved, quota reserved once, subtasks written once, in order."""

from __future__ import annotations

from collections import Counter
from typing import Any

import boto3
import pytest

from core.planning.planner import PlannerDeps, PlanOutcome, plan_task
from core.settings import Settings
from core.states import ContactStatus, TaskStatus
from core.storage.models import ContactModel, SubtaskModel, TaskModel, UserModel
from tests.conftest import FakeClock
from tests.support.planning import (
    PlannerDriver,
    seed_contacts,
    seed_service,
    seed_task,
    seed_user,
    subtasks_of,
)


def _snapshot(task_id: str) -> list[tuple[object, ...]]:
    return sorted((s.contact_id, s.seq, s.service_id, s.template_id, s.status, s.email) for s in subtasks_of(task_id))


def test_tag_rule_plans_one_subtask_per_eligible_recipient_in_contact_order(
    planner: PlannerDriver, clock: FakeClock
) -> None:
    # Given a user with 30 newsletter contacts, 7 of them also tagged unsubscribed, and 2 services
    now = clock.now()
    seed_service("svc_a", now, sending_rate=1.0)
    seed_service("svc_b", now, sending_rate=0.5)
    seed_user("alice", 1000, ["svc_a", "svc_b"], now)
    seed_contacts("alice", 23, now, tags=["newsletter"])
    seed_contacts("alice", 7, now, tags=["newsletter", "unsubscribed"], start=100)
    seed_contacts("alice", 5, now, tags=["other"], start=200)
    seed_contacts("alice", 3, now, tags=["newsletter"], start=300, status="bounced")
    task = seed_task("alice", now, include=["newsletter"], exclude=["unsubscribed"])

    # When the planner runs
    planner.enqueue(task.task_id)
    planner.drain()

    # Then exactly the 23 eligible recipients have a queued subtask, in contact-id order
    subtasks = sorted(subtasks_of(task.task_id), key=lambda s: s.seq)
    assert len(subtasks) == 23
    assert [s.seq for s in subtasks] == list(range(23))
    assert [s.contact_id for s in subtasks] == sorted(s.contact_id for s in subtasks)
    assert {s.service_id for s in subtasks} == {"svc_a", "svc_b"}
    assert all(s.status == "queued" and s.queue_key == f"{s.service_id}#{task.task_id}" for s in subtasks)
    # and the quota dropped by exactly that number, and the task is queued with its totals
    assert UserModel.get("alice").remaining_quota == 1000 - 23
    task.refresh()
    assert task.status == TaskStatus.QUEUED
    assert task.counts.total == 23 and task.counts.queued == 23
    assert task.counts.suppressed == 3  # named by the rule but bounced
    assert task.quota_reserved == 23

    # When the planner runs again (a duplicate message), nothing changes
    before = _snapshot(task.task_id)
    planner.enqueue(task.task_id)
    planner.drain()
    assert _snapshot(task.task_id) == before
    assert UserModel.get("alice").remaining_quota == 1000 - 23


def test_faster_service_gets_the_larger_share(planner: PlannerDriver, clock: FakeClock) -> None:
    now = clock.now()
    seed_service("slow", now, sending_rate=4.0, daily_quota=1_000_000)  # 21,600/day
    seed_service("fast", now, sending_rate=1.0, daily_quota=1_000_000)  # 86,400/day
    seed_user("alice", 1000, ["slow", "fast"], now)
    seed_contacts("alice", 200, now, tags=["all"])
    task = seed_task("alice", now, include=["all"], templates=["tpl_1", "tpl_2"])

    planner.enqueue(task.task_id)
    planner.drain()

    subtasks = subtasks_of(task.task_id)
    fast = sum(1 for s in subtasks if s.service_id == "fast")
    assert fast == 160  # 4:1, interleaved by position
    by_seq = {int(s.seq): s for s in subtasks}
    assert [by_seq[i].template_id for i in range(4)] == ["tpl_1", "tpl_2", "tpl_1", "tpl_2"]
    assert sum(1 for s in subtasks if s.template_id == "tpl_1") == 100


def test_unhealthy_and_exhausted_services_get_no_work(planner: PlannerDriver, clock: FakeClock) -> None:
    now = clock.now()
    seed_service("sick", now, healthy=False)
    seed_service("off", now, enabled=False)
    seed_service("ok", now)
    seed_user("alice", 1000, ["sick", "off", "ok"], now)
    seed_contacts("alice", 20, now, tags=["all"])
    task = seed_task("alice", now, include=["all"])

    planner.enqueue(task.task_id)
    planner.drain()

    assert {s.service_id for s in subtasks_of(task.task_id)} == {"ok"}


def test_explicit_contacts_union_tag_rule_minus_exclude_tags(planner: PlannerDriver, clock: FakeClock) -> None:
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 1000, ["svc"], now)
    tagged = seed_contacts("alice", 5, now, tags=["vip"])
    plain = seed_contacts("alice", 4, now, tags=[], start=50)
    excluded = seed_contacts("alice", 2, now, tags=["blocked"], start=90)
    task = seed_task("alice", now, include=["vip"], exclude=["blocked"], contacts=[*plain[:2], excluded[0], tagged[0]])

    planner.enqueue(task.task_id)
    planner.drain()

    assert {s.contact_id for s in subtasks_of(task.task_id)} == set(tagged) | set(plain[:2])


def test_insufficient_quota_rejects_without_writing_or_reserving(planner: PlannerDriver, clock: FakeClock) -> None:
    # Given a user whose remaining quota is one short of the audience
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 9, ["svc"], now)
    seed_contacts("alice", 10, now, tags=["all"])
    task = seed_task("alice", now, include=["all"])

    # When the planner runs
    planner.enqueue(task.task_id)
    planner.drain()

    # Then the task is rejected with a clear reason, nothing written, nothing reserved
    task.refresh()
    assert task.status == TaskStatus.REJECTED
    assert task.reason == "insufficient_quota"
    assert task.quota_reserved is None
    assert subtasks_of(task.task_id) == []
    assert UserModel.get("alice").remaining_quota == 9


def test_future_schedule_ends_scheduled(planner: PlannerDriver, clock: FakeClock) -> None:
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 100, ["svc"], now)
    seed_contacts("alice", 3, now, tags=["all"])
    task = seed_task("alice", now, include=["all"], scheduled_at=now + 3600)

    planner.enqueue(task.task_id)
    planner.drain()

    task.refresh()
    assert task.status == TaskStatus.SCHEDULED
    assert task.active_partition == "active"


def test_no_eligible_recipient_rejects_the_task(planner: PlannerDriver, clock: FakeClock) -> None:
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 100, ["svc"], now)
    seed_contacts("alice", 3, now, tags=["all"], status="unsubscribed")
    task = seed_task("alice", now, include=["all"])

    planner.enqueue(task.task_id)
    planner.drain()

    task.refresh()
    assert (task.status, task.reason) == (TaskStatus.REJECTED, "no_eligible_recipients")
    assert UserModel.get("alice").remaining_quota == 100


def test_contacts_added_after_creation_are_not_recipients(planner: PlannerDriver, clock: FakeClock) -> None:
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 100, ["svc"], now)
    seed_contacts("alice", 3, now, tags=["all"])
    task = seed_task("alice", now, include=["all"])
    seed_contacts("alice", 2, now + 5, tags=["all"], start=10)

    planner.enqueue(task.task_id)
    planner.drain()

    assert len(subtasks_of(task.task_id)) == 3
    assert UserModel.get("alice").remaining_quota == 97


def test_a_run_that_does_not_hold_the_lease_changes_nothing(planner: PlannerDriver, clock: FakeClock) -> None:
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 100, ["svc"], now)
    seed_contacts("alice", 3, now, tags=["all"])
    task = seed_task("alice", now, include=["all"])
    # Another live run holds the lease
    task.update(actions=[TaskModel.planner_lease_owner.set("other"), TaskModel.planner_lease_until.set(now + 60)])

    planner.enqueue(task.task_id)
    planner.drain()

    task.refresh()
    assert task.status == TaskStatus.PLANNING
    assert subtasks_of(task.task_id) == []
    assert UserModel.get("alice").remaining_quota == 100

    # Once the holder's lease has expired (it died), a new run takes over and finishes
    clock.advance(61)
    planner.enqueue(task.task_id)
    planner.drain()
    task.refresh()
    assert task.status == TaskStatus.QUEUED
    assert len(subtasks_of(task.task_id)) == 3


def _plan(task_id: str) -> list[tuple[object, ...]]:
    return sorted((s.contact_id, s.seq, s.service_id, s.template_id, s.status) for s in subtasks_of(task_id))


def test_chunked_plan_over_many_invocations_equals_one_shot_plan(planner: PlannerDriver, clock: FakeClock) -> None:
    # Given 2,000 tagged contacts (some excluded) and two identical tasks
    now = clock.now()
    seed_service("svc_a", now, sending_rate=0.5)
    seed_service("svc_b", now, sending_rate=1.0)
    seed_user("alice", 10_000, ["svc_a", "svc_b"], now)
    seed_contacts("alice", 1_900, now, tags=["all"])
    seed_contacts("alice", 100, now, tags=["all", "skip"], start=5_000)
    templates = ["tpl_1", "tpl_2", "tpl_3"]
    one_shot = seed_task("alice", now, include=["all"], exclude=["skip"], templates=templates)
    chunked = seed_task("alice", now, include=["all"], exclude=["skip"], templates=templates)

    # When one is planned in a single invocation, the other 100 contacts per chunk, 2 chunks per invocation
    planner.enqueue(one_shot.task_id)
    assert planner.drain() == 1
    planner.enqueue(chunked.task_id)
    invocations = planner.drain(chunks_per_invocation=2, page_size=100)

    # Then the chunked plan took many invocations and produced exactly the same subtasks and totals
    assert invocations >= 20
    assert len(_plan(one_shot.task_id)) == 1_900
    assert _plan(chunked.task_id) == _plan(one_shot.task_id)
    one_shot.refresh()
    chunked.refresh()
    assert chunked.counts.as_dict() == one_shot.counts.as_dict()
    assert chunked.plan.invocations == invocations
    assert UserModel.get("alice").remaining_quota == 10_000 - 2 * 1_900


def test_twenty_thousand_recipients_plan_across_invocations(planner: PlannerDriver, clock: FakeClock) -> None:
    # Given 20,000 tagged contacts and a task for all of them
    now = clock.now()
    seed_service("svc_a", now, sending_rate=0.5)
    seed_service("svc_b", now, sending_rate=1.0)
    seed_user("alice", 25_000, ["svc_a", "svc_b"], now)
    contact_ids = seed_contacts("alice", 20_000, now, tags=["all"])
    task = seed_task("alice", now, include=["all"], templates=["tpl_1", "tpl_2"])

    # When it is planned with a budget of two chunks per invocation
    planner.enqueue(task.task_id)
    invocations = planner.drain(chunks_per_invocation=2)

    # Then it spans several invocations and equals the one-shot plan: every contact once, in
    # contact-id order, services interleaved by the routing cycle, templates alternating
    assert invocations >= 5
    task.refresh()
    cycle = list(task.plan.routing)
    expected = [
        (contact_id, seq, cycle[seq % len(cycle)], ["tpl_1", "tpl_2"][seq % 2], "queued")
        for seq, contact_id in enumerate(sorted(contact_ids))
    ]
    assert _plan(task.task_id) == expected
    assert (task.status, task.counts.total, task.counts.queued) == (TaskStatus.QUEUED, 20_000, 20_000)
    assert UserModel.get("alice").remaining_quota == 5_000
    assert SubtaskModel.count() == 20_000


# ---------------------------------------------------------------- reads, crashes, redelivery


class _CountingDynamoDB:
    """The planner's DynamoDB client, counting its calls by operation; after `writes_before_crash`
    BatchWriteItem calls the process "dies" (every later call raises)."""

    def __init__(self, writes_before_crash: int | None = None) -> None:
        self.client = boto3.client("dynamodb")
        self.calls: Counter[str] = Counter()
        self.writes_before_crash = writes_before_crash

    def __getattr__(self, operation: str) -> Any:
        method = getattr(self.client, operation)

        def call(**request: Any) -> Any:
            if operation == "batch_write_item" and self.calls[operation] == self.writes_before_crash:
                raise RuntimeError("the planner died mid-chunk")
            self.calls[operation] += 1
            return method(**request)

        return call


def _deps(settings: Settings, clock: FakeClock, owner: str, dynamodb: Any, *, page_size: int = 2000) -> PlannerDeps:
    return PlannerDeps(
        clock=clock,
        dynamodb=dynamodb,
        subtasks_table=settings.subtasks_table,
        seconds_left=lambda: 60.0,
        owner=owner,
        lease_seconds=300.0,
        page_size=page_size,
        write_concurrency=1,  # the crash point is then one exact BatchWriteItem
    )


def _items(task_id: str) -> dict[str, dict[str, Any]]:
    return {s.contact_id: s.serialize() for s in subtasks_of(task_id)}


def test_a_plan_that_fits_one_invocation_reads_each_contact_once(aws: Settings, clock: FakeClock) -> None:
    # Given 500 tagged contacts, read 100 a page
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 1000, ["svc"], now)
    seed_contacts("alice", 500, now, tags=["all"])
    task = seed_task("alice", now, include=["all"])
    dynamodb = _CountingDynamoDB()

    # When it is planned in one invocation
    assert plan_task(task.task_id, _deps(aws, clock, "run", dynamodb, page_size=100)) is PlanOutcome.DONE

    # Then the write pass wrote from the pages the count pass had read: five Queries, not ten
    assert dynamodb.calls["query"] <= 6  # DynamoDB may end the last full page with a LastEvaluatedKey
    assert dynamodb.calls["batch_write_item"] == 20
    assert len(subtasks_of(task.task_id)) == 500


def test_a_write_pass_in_a_later_invocation_reads_again_and_skips_who_unsubscribed_meanwhile(
    planner: PlannerDriver, clock: FakeClock
) -> None:
    # Given a task whose count pass ended with the first invocation (3 pages of 100)
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 1000, ["svc"], now)
    contact_ids = seed_contacts("alice", 300, now, tags=["all"])
    task = seed_task("alice", now, include=["all"])
    planner.enqueue(task.task_id)
    planner.drain(chunks_per_invocation=3, page_size=100, max_invocations=1, must_settle=False)
    task.refresh()
    assert (task.plan.phase, task.plan.counted) == ("reserve", 300)

    # When a recipient unsubscribes before the subtasks are written, and planning goes on
    ContactModel("alice", contact_ids[7]).update(actions=[ContactModel.status.set(ContactStatus.UNSUBSCRIBED)])
    planner.drain(page_size=100)

    # Then no subtask is written for them and their share of the reservation comes back
    task.refresh()
    assert contact_ids[7] not in _items(task.task_id)
    assert (task.status, task.counts.total, task.quota_reserved, task.quota_refunded) == ("queued", 299, 300, 1)
    assert UserModel.get("alice").remaining_quota == 1000 - 299


def test_a_chunk_redone_after_a_crash_rewrites_the_same_subtasks(aws: Settings, clock: FakeClock) -> None:
    # Given a planner that dies after writing two of its first chunk's BatchWriteItems
    now = clock.now()
    seed_service("svc_a", now, sending_rate=0.5)
    seed_service("svc_b", now)
    seed_user("alice", 1000, ["svc_a", "svc_b"], now)
    seed_contacts("alice", 120, now, tags=["all"])
    task = seed_task("alice", now, include=["all"], templates=["tpl_1", "tpl_2"])
    with pytest.raises(RuntimeError, match="died"):
        plan_task(task.task_id, _deps(aws, clock, "first", _CountingDynamoDB(writes_before_crash=2), page_size=100))
    written_before = _items(task.task_id)
    task.refresh()
    assert len(written_before) == 50 and task.plan.written == 0  # written, never committed

    # When its lease has expired and the redelivered message plans the task later
    clock.advance(301)
    assert plan_task(task.task_id, _deps(aws, clock, "second", _CountingDynamoDB(), page_size=100)) is PlanOutcome.DONE

    # Then the redone chunk rewrote those subtasks exactly as they were, and the plan is whole
    written = _items(task.task_id)
    assert {contact_id: written[contact_id] for contact_id in written_before} == written_before
    assert sorted(int(item["seq"]["N"]) for item in written.values()) == list(range(120))
    task.refresh()
    assert (task.status, task.counts.total, task.counts.queued, task.quota_reserved) == ("queued", 120, 120, 120)
    assert UserModel.get("alice").remaining_quota == 1000 - 120


def test_explicit_contacts_beyond_one_batch_get_are_planned_in_one_chunk(aws: Settings, clock: FakeClock) -> None:
    # Given a task naming 250 contacts explicitly, two of them unknown and one excluded by tag
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 1000, ["svc"], now)
    named = seed_contacts("alice", 249, now, tags=[])
    blocked = seed_contacts("alice", 1, now, tags=["blocked"], start=1000)
    task = seed_task("alice", now, exclude=["blocked"], contacts=[*named, *blocked, "ct_missing1", "ct_missing2"])
    dynamodb = _CountingDynamoDB()

    # When it is planned
    assert plan_task(task.task_id, _deps(aws, clock, "run", dynamodb)) is PlanOutcome.DONE

    # Then every named contact that exists and is not excluded has its subtask, read in one chunk
    assert set(_items(task.task_id)) == set(named)
    assert dynamodb.calls["batch_get_item"] == 3  # 252 keys, 100 a request, read once
    task.refresh()
    assert (task.counts.total, task.plan.chunks) == (249, 2)  # one count chunk, one write chunk
