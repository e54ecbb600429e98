"""The reputation guard's write-once guarantees on the single-threaded embedded server, where every
request is atomic as in DynamoDB: counters from concurrent SES event batches sum exactly, concurrent
guards write one hold and pause each task once, and guards racing an admin's resume with the old
counters never hold the tenant again."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from core.api.auth import Caller
from core.api.reputation import ResumeDeps, resume_user_sending
from core.clock import SystemClock
from core.deliverability import reputation
from core.deliverability.reputation import Hold, Outcome, ReputationPolicy, guard, read_window, record
from core.settings import Settings
from core.storage.models import TaskModel, UserModel
from local_runner.moto_server import EmbeddedAws
from tests.support.dispatching import World, start_scheduler

POLICY = ReputationPolicy()
THREADS = 6


def run_together(work: Callable[[int], None], threads: int = THREADS) -> None:
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(number: int) -> None:
        start.wait()
        try:
            work(number)
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(error)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors


def test_concurrent_batches_sum_and_concurrent_guards_hold_once(
    embedded_aws: EmbeddedAws, aws_server: Settings
) -> None:
    clock = SystemClock()
    start_scheduler(clock.now())
    world = World(aws_server, clock)
    world.service("svc_a")
    tasks = [world.campaign("ann", 3, ["svc_a"]) for _ in range(3)]

    def report(number: int) -> None:
        now = clock.now()
        batch = [Outcome("ann", "svc_a", "sent", now)] * 40 + [Outcome("ann", "svc_a", "bounced", now)] * 2
        record(batch, now)

    run_together(report)
    window = read_window("user#ann", clock.now(), POLICY)
    assert (window.sent, window.bounced) == (40 * THREADS, 2 * THREADS)  # 5 %

    holds: list[Hold] = []
    lock = threading.Lock()

    def check(number: int) -> None:
        found = guard(["ann"], [], clock.now(), POLICY)
        with lock:
            holds.extend(found)

    run_together(check)
    assert [(hold.scope_id, hold.reason) for hold in holds] == [("ann", "bounce_rate:5%_of_240_sends")]
    assert holds[0].paused_tasks == len(tasks)
    for task_id in tasks:
        stored = TaskModel.get(task_id, consistent_read=True)
        assert (stored.status, stored.reason) == ("paused", "reputation_hold")


def test_guards_racing_an_admin_resume_with_the_old_counters_never_hold_again(
    embedded_aws: EmbeddedAws, aws_server: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SystemClock()
    start_scheduler(clock.now())
    world = World(aws_server, clock)
    world.service("svc_a")
    task_id = world.campaign("ann", 3, ["svc_a"])
    now = clock.now()
    record([Outcome("ann", "svc_a", "sent", now)] * 200 + [Outcome("ann", "svc_a", "bounced", now)] * 20, now)
    assert guard(["ann"], [], now, POLICY)
    # Every other thread's guard reads the old counters before the resume and writes after it.
    read_old, resumed = threading.Event(), threading.Event()
    write_hold = reputation.hold_user

    def hold_after_the_resume(user_id: str, reason: str, now: float, *, resets_seen: int) -> int | None:
        read_old.set()
        assert resumed.wait(30)
        return write_hold(user_id, reason, now, resets_seen=resets_seen)

    monkeypatch.setattr(reputation, "hold_user", hold_after_the_resume)
    late_holds: list[Hold] = []

    def work(number: int) -> None:
        if number == 0:
            assert read_old.wait(30)
            resume_user_sending(Caller("admin", frozenset({"admins"})), "ann", ResumeDeps(clock=clock))
            resumed.set()
        else:
            late_holds.extend(guard(["ann"], [], clock.now(), POLICY))

    run_together(work)
    assert late_holds == []
    assert UserModel.get("ann", consistent_read=True).sending_hold is None
    assert TaskModel.get(task_id, consistent_read=True).status == "queued"
