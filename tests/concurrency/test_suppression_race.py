"""Suppressing addresses while dispatchers send, on the single-threaded embedded server: no subtask
is claimed once its address's entry is written (the claim checks the list), every subtask ends
`sent` xor `suppressed`, each suppressed one is refunded exactly once (the list's sweep and a
refused claim race on `status = queued`), and another tenant's copies of the addresses are sent.

One suppression is steered into the window the claim check closes: the dispatcher picking the
address waits until the entry is written, and the sweep waits until that claim is made; without
the check that email would go out after its address was listed."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

import core.suppressions as suppressions
from core.clock import SystemClock
from core.dispatch.dispatcher import DispatchReport, dispatch_service
from core.settings import Settings
from core.states import SuppressionReason
from core.storage.models import SubtaskModel, TaskModel, UserModel
from core.suppressions import suppress
from local_runner.moto_server import EmbeddedAws
from tests.concurrency.test_dispatcher_crashes import Clients, _deps, _recipient
from tests.support.dispatching import World, plan_now, seed_sender_and_template, start_scheduler
from tests.support.planning import seed_contacts, seed_task, seed_user

RATE = 0.005
CONTACTS = 40
ALICE_TASKS = 4
QUOTA = 10_000


class Steering:
    """The hooks that steer the first victim into the window, and what they saw."""

    def __init__(self, steered: str) -> None:
        self.steered = steered  # contact id
        self.lock = threading.Lock()
        self.picked = threading.Event()  # a dispatcher is about to claim the steered address
        self.written = threading.Event()  # its entry is written
        self.claimed = threading.Event()  # that dispatcher's claim went through (or was refused)
        self.claim_asked: dict[tuple[str, str], float] = {}  # subtask key -> last claim request
        self.written_at: dict[str, float] = {}  # contact id -> entry written
        self.steering = True

    def fault(self, point: str, subtask: SubtaskModel) -> None:
        key = (subtask.partition, subtask.contact_id)
        if point == "before_claim":
            with self.lock:
                steer = self.steering and subtask.contact_id == self.steered and subtask.user_id == "alice"
                self.steering = self.steering and not steer
            if steer:
                self.picked.set()
                assert self.written.wait(10)
            with self.lock:
                self.claim_asked[key] = time.monotonic()
        elif point == "after_claim" and not self.claimed.is_set() and self.written.is_set():
            self.claimed.set()


@pytest.fixture
def steering(monkeypatch: pytest.MonkeyPatch) -> Any:
    holder: dict[str, Steering] = {}
    entry_written = suppressions._entry_written
    sweep = suppressions._sweep

    def written(entry: Any, *args: Any) -> bool:
        done = entry_written(entry, *args)
        steer = holder["steering"]
        with steer.lock:
            steer.written_at.setdefault(entry.contact_id, time.monotonic())
        if entry.contact_id == steer.steered:
            steer.written.set()
        return done

    def delayed_sweep(user_id: str, notes: dict[str, str], *args: Any) -> dict[str, int]:
        steer = holder["steering"]
        if steer.steered in notes:
            steer.claimed.wait(2.0)  # the refused claim comes first: it suppresses and refunds
        return sweep(user_id, notes, *args)

    monkeypatch.setattr(suppressions, "_entry_written", written)
    monkeypatch.setattr(suppressions, "_sweep", delayed_sweep)
    return holder


def test_suppressing_while_dispatchers_send_never_claims_a_listed_address(
    embedded_aws: EmbeddedAws, aws_server: Settings, steering: dict[str, Steering]
) -> None:
    # Given alice's four campaigns and bob's one over the same 40 addresses, on two services
    clock = SystemClock()
    start_scheduler(clock.now())
    world = World(aws_server, clock)
    for service_id in ("svc_a", "svc_b"):
        world.service(service_id, sending_rate=RATE)
    now = clock.now()
    task_ids: dict[str, list[str]] = {"alice": [], "bob": []}
    for user_id, count in (("alice", ALICE_TASKS), ("bob", 1)):
        seed_user(user_id, QUOTA, ["svc_a", "svc_b"], now)
        seed_sender_and_template(user_id, now)
        contact_ids = seed_contacts(user_id, CONTACTS, now, tags=["news"])
        for _ in range(count):
            created = seed_task(user_id, now, include=["news"])
            plan_now(created.task_id, aws_server, clock)
            task_ids[user_id].append(created.task_id)
    order = sorted(contact_ids)
    email_of = {s.contact_id: s.email for s in SubtaskModel.scan(consistent_read=True)}
    steered, *others = [order[i] for i in (12, 20, 26, 31, 36)]
    steer = steering["steering"] = Steering(steered)

    reports: list[DispatchReport] = []
    errors: list[BaseException] = []

    def send(service_id: str) -> None:
        try:
            deps = _deps(aws_server, Clients.make(), owner=f"{service_id}-1", budget=40.0, fault=steer.fault)
            reports.append(dispatch_service(service_id, deps))
        except BaseException as error:  # reported below
            errors.append(error)

    def suppress_victims() -> None:
        try:
            assert steer.picked.wait(30)
            suppress("alice", email_of[steered], SuppressionReason.BOUNCED, clock.now())
            for contact_id in others:  # back to back, while the dispatchers go on
                suppress("alice", email_of[contact_id], SuppressionReason.COMPLAINED, clock.now())
        except BaseException as error:  # reported below
            errors.append(error)

    # When
    threads = [threading.Thread(target=send, args=(s,)) for s in ("svc_a", "svc_b")]
    threads.append(threading.Thread(target=suppress_victims))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)

    # Then no subtask of a listed address was claimed after its entry was written
    subtasks = list(SubtaskModel.scan(consistent_read=True))
    assert Counter(s.status for s in subtasks).keys() <= {"sent", "suppressed"}, Counter(s.status for s in subtasks)
    victims = {steered, *others}
    late = [
        (s.task_id, s.contact_id)
        for s in subtasks
        if s.user_id == "alice"
        and s.contact_id in victims
        and s.status == "sent"
        and steer.claim_asked[(s.partition, s.contact_id)] > steer.written_at[s.contact_id]
    ]
    assert not late, late
    # the steered address was refused at its claim (or swept), in every one of alice's tasks
    assert all(s.status == "suppressed" for s in subtasks if s.user_id == "alice" and s.contact_id == steered)
    assert sum(report.suppressed for report in reports) >= 1
    assert all(s.status == "sent" for s in subtasks if s.user_id == "bob")

    # every email went out once, and only for a sent subtask
    sent = Counter(s.email for s in subtasks if s.status == "sent")
    assert Counter(_recipient(message) for message in embedded_aws.sent_raw_messages()) == sent

    # refunds: exactly one unit per suppressed subtask, in the task and in the user
    alice_sent = 0
    for task_id in task_ids["alice"]:
        final = TaskModel.get(task_id, consistent_read=True)
        mine = [s for s in subtasks if s.task_id == task_id]
        suppressed = sum(1 for s in mine if s.status == "suppressed")
        alice_sent += sum(1 for s in mine if s.status == "sent")
        assert suppressed >= 1
        assert (final.status, final.counts.queued, final.counts.suppressed, final.quota_refunded) == (
            "completed",
            0,
            suppressed,
            suppressed,
        )
        assert final.counts.sent == CONTACTS - suppressed
    assert UserModel.get("alice", consistent_read=True).remaining_quota == QUOTA - alice_sent
    assert UserModel.get("bob", consistent_read=True).remaining_quota == QUOTA - CONTACTS
