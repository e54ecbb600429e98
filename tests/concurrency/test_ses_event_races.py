"""The same SES notification applied by concurrent workers (SNS and SQS deliver at least once, and
Lambda may run two copies of a message at once) on the single-threaded embedded AWS, where each
request is atomic as in DynamoDB: each kind is counted exactly once, however many race."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.deliverability.event_effects import EventPorts, Result, apply_event
from core.deliverability.ses_events import parse
from core.settings import Settings
from core.states import SubtaskStatus, TaskStatus
from core.storage.ids import contact_id_for, subtask_partition
from core.storage.models import ContactModel, SubtaskModel, TaskModel
from local_runner.ses_events import event_record, mail_object
from tests.support.planning import seed_contacts, seed_task, seed_user

pytestmark = pytest.mark.concurrency

WORKERS = 6


def test_racing_copies_of_each_notification_count_once(aws_server: Settings) -> None:
    # Given one sent email
    now = 1_796_000_000.0
    seed_user("alice", 10, ["svc_a"], now)
    seed_contacts("alice", 1, now, tags=["news"])
    task = seed_task("alice", now, include=["news"])
    task.update(actions=[TaskModel.status.set(TaskStatus.COMPLETED)])
    contact_id = contact_id_for("person0@example.org")
    SubtaskModel(
        subtask_partition(task.task_id, contact_id),
        contact_id,
        task_id=task.task_id,
        user_id="alice",
        seq=0,
        email="person0@example.org",
        template_id="tpl_1",
        service_id="svc_a",
        status=SubtaskStatus.SENT,
        message_id="0100019a-race-msg",
        created_at=now,
    ).save()
    mail = mail_object("0100019a-race-msg", "news@shop.example", ["person0@example.org"], [], now)
    kinds = ["delivery", "complaint", "soft_bounce"]
    events = {kind: parse(json.dumps(event_record(kind, mail, now + 1))) for kind in kinds}
    suppressed: list[str] = []
    ports = EventPorts(
        suppress=lambda user_id, email, reason, at, *, detail=None: suppressed.append(reason),
        record=lambda outcomes, at: None,
        guard=lambda users, services, at: None,
        defer=lambda service_id, address, delay_type, at, *, reported_at, subtask_key=None: None,
    )

    # When WORKERS copies of each notification are applied at once
    jobs = [kind for kind in kinds for _ in range(WORKERS)]
    start_together = threading.Barrier(len(jobs))

    def run(kind: str) -> tuple[str, Result]:
        start_together.wait()
        return kind, apply_event(events[kind], now + 2, ports).result

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(run, jobs))

    # Then each kind was applied by exactly one of them, and counted once
    for kind in kinds:
        assert sorted(result for k, result in results if k == kind) == [Result.APPLIED] + [Result.DUPLICATE] * (
            WORKERS - 1
        ), kind
    counts = TaskModel.get(task.task_id, consistent_read=True).counts
    assert (counts.delivered, counts.complained, counts.soft_bounced) == (1, 1, 1)
    assert ContactModel.get("alice", contact_id, consistent_read=True).soft_bounces == 1
    subtask = SubtaskModel.get(subtask_partition(task.task_id, contact_id), contact_id, consistent_read=True)
    assert subtask.ses_events == {"delivery", "complaint", "soft_bounce"}
    assert len(suppressed) == WORKERS  # idempotent itself: every copy asks
