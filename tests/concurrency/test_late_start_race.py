"""The late-start guard racing itself on the single-threaded embedded server: a campaign routed over
two services, 25 hours late, found late by both services' dispatchers at once (each has read the
task before either writes). One move to `expired`, nothing sent (core.late_start)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from core import late_start
from core.clock import SystemClock
from core.dispatch import dispatcher
from core.dispatch.dispatcher import DispatchReport, StopReason, dispatch_service
from core.settings import Settings
from core.states import TaskStatus
from core.storage.models import SubtaskModel, TaskModel
from local_runner.moto_server import EmbeddedAws
from tests.concurrency.test_dispatcher_crashes import Clients, _deps
from tests.support.dispatching import World, plan_now, seed_sender_and_template, start_scheduler
from tests.support.planning import seed_contacts, seed_task, seed_user

HOUR = 3_600.0
RECIPIENTS = 20


def test_two_dispatchers_expiring_one_task_at_once_move_it_once_and_send_nothing(
    embedded_aws: EmbeddedAws, aws_server: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SystemClock()
    start_scheduler(clock.now())
    world = World(aws_server, clock)
    world.service("svc_a", sending_rate=0.01)
    world.service("svc_b", sending_rate=0.01)
    now = clock.now()
    seed_user("carol", 1_000, ["svc_a", "svc_b"], now)
    seed_sender_and_template("carol", now)
    seed_contacts("carol", RECIPIENTS, now, tags=["news"])
    task_id = seed_task("carol", now, include=["news"], scheduled_at=now - 25 * HOUR).task_id
    plan_now(task_id, aws_server, clock)
    planned = TaskModel.get(task_id, consistent_read=True)
    assert planned.status == TaskStatus.QUEUED
    assert Counter(s.service_id for s in SubtaskModel.scan(consistent_read=True)) == {"svc_a": 10, "svc_b": 10}

    # Both dispatchers reach the guard with the task as they read it before either writes.
    both_read = threading.Barrier(2, timeout=30)
    first_look = threading.local()
    moves: list[bool] = []
    lock = threading.Lock()
    real_expire, real_move = late_start.expire_if_late, late_start.move_task

    def expire_together(task: TaskModel, at: float, default: float) -> bool:
        if not getattr(first_look, "done", False):
            first_look.done = True
            both_read.wait()
        return real_expire(task, at, default)

    def counted_move(*args: Any, **kwargs: Any) -> bool:
        moved = real_move(*args, **kwargs)
        with lock:
            moves.append(moved)
        return moved

    monkeypatch.setattr(dispatcher, "expire_if_late", expire_together)
    monkeypatch.setattr(late_start, "move_task", counted_move)

    reports: dict[str, DispatchReport] = {}
    errors: list[BaseException] = []

    def run(service_id: str) -> None:
        try:
            deps = _deps(aws_server, Clients.make(), owner=f"tick-{service_id}", budget=5.0)
            reports[service_id] = dispatch_service(service_id, deps)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(service_id,)) for service_id in ("svc_a", "svc_b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    assert sorted(moves) == [False, True]  # one move; the other's condition refused it
    assert {r.stop_reason for r in reports.values()} == {StopReason.NO_WORK}
    assert [r.sent for r in reports.values()] == [0, 0]
    assert embedded_aws.sent_raw_messages() == []
    final = TaskModel.get(task_id, consistent_read=True)
    assert final.status == TaskStatus.EXPIRED and (final.reason or "").startswith("late_start:25h00m")
    assert final.active_partition == "held"
    assert Counter(s.status for s in SubtaskModel.scan(consistent_read=True)) == {"queued": RECIPIENTS}
