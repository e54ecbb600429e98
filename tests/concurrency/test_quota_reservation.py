"""Concurrent planners against one user's quota, on the single-threaded embedded AWS: the
conditional reservation admits exactly what fits, and duplicate runs of a task reserve once."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.config import Config

from core.clock import SystemClock
from core.planning.planner import PlannerDeps, PlanOutcome, plan_task
from core.settings import Settings
from core.states import TaskStatus
from core.storage.models import SubtaskModel, TaskModel, UserModel
from tests.support.planning import seed_contacts, seed_service, seed_task, seed_user

pytestmark = pytest.mark.concurrency


def test_concurrent_plans_never_over_reserve_one_quota(aws_server: Settings) -> None:
    # Given a user with quota 100 and eight tasks of 30 recipients each (only three fit)
    clock = SystemClock()
    now = clock.now()
    seed_service("svc", now)
    seed_user("alice", 100, ["svc"], now)
    tasks = []
    for number in range(8):
        seed_contacts("alice", 30, now, tags=[f"list{number}"], start=number * 100)
        tasks.append(seed_task("alice", now + 1, include=[f"list{number}"]))

    # When two planner runs per task race each other, sixteen threads in all
    runs = [task.task_id for task in tasks for _ in range(2)]
    start_together = threading.Barrier(len(runs))

    def run(task_id: str) -> PlanOutcome:
        deps = PlannerDeps(
            clock=clock,
            dynamodb=boto3.client("dynamodb", config=Config(retries={"max_attempts": 3})),
            subtasks_table=aws_server.subtasks_table,
            seconds_left=lambda: 60.0,
            owner=uuid.uuid4().hex,
            lease_seconds=300.0,
        )
        start_together.wait()
        return plan_task(task_id, deps)

    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        outcomes = list(pool.map(run, runs))

    # Then exactly one run per task did the work, three tasks fit and five were rejected
    assert outcomes.count(PlanOutcome.DONE) == 8
    assert outcomes.count(PlanOutcome.SKIPPED) == 8
    finals = [TaskModel.get(task.task_id, consistent_read=True) for task in tasks]
    queued = [task for task in finals if task.status == TaskStatus.QUEUED]
    rejected = [task for task in finals if task.status == TaskStatus.REJECTED]
    assert len(queued) == 3 and len(rejected) == 5
    assert all(task.reason == "insufficient_quota" and task.quota_reserved is None for task in rejected)
    # and the quota moved by exactly what was written
    assert int(UserModel.get("alice", consistent_read=True).remaining_quota) == 100 - 3 * 30
    subtasks = list(SubtaskModel.scan())
    assert len(subtasks) == 90
    assert {s.task_id for s in subtasks} == {task.task_id for task in queued}
