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
from tests.concurrency.test_dispatcher_crashes import Clients, _deps, _recipient
from tests.support.dispatching import World, plan_now, seed_sender_and_template, start_scheduler
from tests.support.planning import seed_contacts, seed_task, seed_user

HOUR = 3_600.0
RECIPIENTS = 20


def _campaign_over_two_services(settings: Settings, late_by: float) -> str:
    """carol's planned campaign of RECIPIENTS, routed over svc_a and svc_b, scheduled `late_by` ago."""
    clock = SystemClock()
    start_scheduler(clock.now())
    world = World(settings, clock)
    world.service("svc_a", sending_rate=0.01)
    world.service("svc_b", sending_rate=0.01)
    now = clock.now()
    seed_user("carol", 1_000, ["svc_a", "svc_b"], now)
    seed_sender_and_template("carol", now)
    seed_contacts("carol", RECIPIENTS, now, tags=["news"])
    task_id = seed_task("carol", now, include=["news"], scheduled_at=now - late_by).task_id
    plan_now(task_id, settings, clock)
    return task_id


def test_two_dispatchers_expiring_one_task_at_once_move_it_once_and_send_nothing(
    embedded_aws: EmbeddedAws, aws_server: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = _campaign_over_two_services(aws_server, late_by=25 * HOUR)
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


def test_a_dispatcher_finding_a_task_late_while_another_claims_it_first_leaves_it_sending(
    embedded_aws: EmbeddedAws, aws_server: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """svc_a's dispatcher claims the task's first emails; svc_b's read the task before that claim
    and applies the guard after it, finding it late (its clock an hour on): the expiry's condition
    on `began_at` refuses the move, nothing is expired, every email goes once."""
    task_id = _campaign_over_two_services(aws_server, late_by=60)
    TaskModel(task_id).update(actions=[TaskModel.max_lateness.set(3_600)])

    a_claimed = threading.Event()
    b_read = threading.Event()
    real_expire = late_start.expire_if_late
    verdicts: list[bool] = []

    def guard(task: TaskModel, at: float, default: float) -> bool:
        if threading.current_thread().name == "svc_b" and not b_read.is_set():
            b_read.set()  # its read of the task is done: it has no began_at
            assert a_claimed.wait(30), "svc_a never claimed"
            verdicts.append(real_expire(task, at + HOUR, default))  # an hour late, as svc_b sees it
            return verdicts[-1]
        return real_expire(task, at, default)

    monkeypatch.setattr(dispatcher, "expire_if_late", guard)

    def a_fault(point: str, subtask: SubtaskModel) -> None:
        if point == "before_claim" and not a_claimed.is_set():
            assert b_read.wait(30), "svc_b never read the task"
        if point == "after_claim":
            a_claimed.set()

    reports: dict[str, DispatchReport] = {}
    errors: list[BaseException] = []

    def run(service_id: str) -> None:
        try:
            deps = _deps(aws_server, Clients.make(), owner=f"tick-{service_id}", budget=8.0)
            if service_id == "svc_a":
                deps.fault = a_fault
            reports[service_id] = dispatch_service(service_id, deps)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(s,), name=s) for s in ("svc_a", "svc_b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    assert verdicts == [True]  # late as svc_b read it: left out of that look
    stored = TaskModel.get(task_id, consistent_read=True)
    assert stored.status != TaskStatus.EXPIRED and stored.began_at is not None  # but never expired
    # svc_a sent its share; svc_b left the task out of that look and sends the rest at a later one
    # (in the same tick once a control change makes it reload, else at its next tick)
    assert reports["svc_a"].sent == RECIPIENTS // 2
    later = dispatch_service("svc_b", _deps(aws_server, Clients.make(), owner="tick-svc_b-2", budget=8.0))
    assert reports["svc_b"].sent + later.sent == RECIPIENTS // 2
    recipients = Counter(_recipient(m) for m in embedded_aws.sent_raw_messages())
    assert len(recipients) == RECIPIENTS and set(recipients.values()) == {1}
    assert TaskModel.get(task_id, consistent_read=True).status == TaskStatus.COMPLETED
