"""Domain limits under concurrency and crashes, on the single-threaded embedded AWS with a real
clock: per service three threads keep trying to dispatch (the lease lets one send at a time, ticks
of 0.6-1.5 s hand over constantly), exceptions are injected after sends (each leaves its email
`sending` in the journal: the next holder treats every limited group as just sent to), two services
share one tenant's task, one service's daily quota binds.

Properties: from SES's side (a recording client per service), no address mailed twice and never more
calls on a service than its daily quota (svc_a's binds; its work fails over); from the records, on
each service the emails sent are at least the pace apart and its gmail ones at least their spacing
apart, at the paced instants the dispatcher keeps (times read around the SES call on this loaded
machine jitter by more than the spacing; the after-crash rule is pinned with an injected clock in
tests/integration/test_domain_throttles.py)."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from itertools import pairwise
from typing import Any

import pytest

from core.dispatch.dispatcher import dispatch_service
from core.mail.providers import group_of
from core.settings import Settings
from core.storage.models import EmailServiceModel, SubtaskModel
from local_runner.moto_server import EmbeddedAws
from tests.concurrency.test_dispatcher_crashes import Clients, _deps
from tests.support.dispatching import World, plan_now, seed_sender_and_template, start_scheduler
from tests.support.planning import seed_addresses, seed_service, seed_task, seed_user

pytestmark = pytest.mark.concurrency

RATE = 0.02
GMAIL_SPACING = 0.25  # 240 a minute
QUOTA = 150  # per service: svc_a (both tenants) runs out and hands ann's rest to svc_b
CHAOS_SECONDS = 20.0
SEED = 20_261_202


class RecordingSes:
    """The service's SES client, noting when each SendEmail left and to whom."""

    def __init__(self, inner: Any, calls: list[tuple[float, str]], lock: threading.Lock) -> None:
        self.inner, self.calls, self.lock = inner, calls, lock

    def send_email(self, **request: Any) -> Any:
        with self.lock:
            self.calls.append((time.monotonic(), request["Destination"]["ToAddresses"][0]))
        return self.inner.send_email(**request)


class InjectedFault(RuntimeError):
    pass


def seed(world: World) -> None:
    now = world.clock.now()
    for service_id in ("svc_a", "svc_b"):
        seed_service(service_id, now, sending_rate=RATE, daily_quota=QUOTA)
        EmailServiceModel(service_id).update(
            actions=[EmailServiceModel.domain_limits.set({"gmail": {"per_minute": int(60 / GMAIL_SPACING)}})]
        )
    lists = {"ann": (["svc_a", "svc_b"], 60, 140), "ben": (["svc_a"], 30, 70)}
    for user_id, (services, gmail, others) in lists.items():
        seed_user(user_id, 100_000, services, now)
        seed_sender_and_template(user_id, now)
        addresses = [f"{user_id}{n}@gmail.com" for n in range(gmail)]
        addresses += [f"{user_id}{n}@example{n % 4}.org" for n in range(others)]
        seed_addresses(user_id, addresses, now)
        plan_now(seed_task(user_id, now, include=["list"]).task_id, world.settings, world.clock)


def test_domain_limits_hold_with_concurrent_dispatchers_and_crashes(
    aws_server: Settings, embedded_aws: EmbeddedAws
) -> None:
    from core.clock import SystemClock

    world = World(aws_server, SystemClock())
    start_scheduler(world.clock.now())
    seed(world)
    calls: dict[str, list[tuple[float, str]]] = defaultdict(list)
    lock = threading.Lock()
    faults = Counter[str]()
    stop_at = time.monotonic() + CHAOS_SECONDS

    def worker(service_id: str, number: int) -> None:
        rng = random.Random(SEED + number)
        clients = Clients.make()
        ses = RecordingSes(clients.ses, calls[service_id], lock)

        def fault(point: str, subtask: SubtaskModel) -> None:
            if point == "after_send" and rng.random() < 0.03:
                with lock:
                    faults[service_id] += 1
                raise InjectedFault(subtask.contact_id)

        while time.monotonic() < stop_at:
            deps = _deps(aws_server, clients, owner=uuid.uuid4().hex, budget=rng.uniform(0.6, 1.5), fault=fault)
            deps.ses = ses
            with contextlib.suppress(InjectedFault):  # the email stays `sending`: the next holder recovers it
                dispatch_service(service_id, deps)
            time.sleep(rng.uniform(0.0, 0.2))

    threads = [
        threading.Thread(target=worker, args=(service_id, 3 * index + n))
        for index, service_id in enumerate(("svc_a", "svc_b"))
        for n in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(faults.values()) > 0  # the crash path was taken
    everyone = [address for service_calls in calls.values() for _, address in service_calls]
    assert everyone and len(everyone) == len(set(everyone))  # nobody mailed twice, across services
    assert max(len(service_calls) for service_calls in calls.values()) <= QUOTA
    subtasks = list(SubtaskModel.scan())
    for service_id, service_calls in calls.items():
        gmail = sorted(at for at, address in service_calls if group_of(address) == "gmail")
        assert len(gmail) >= 10, service_id
        sent = [s for s in subtasks if s.status == "sent" and s.service_id == service_id]
        paced = sorted(float(s.sent_at) for s in sent)
        assert min(b - a for a, b in pairwise(paced)) >= RATE - 1e-6, service_id
        paced_gmail = sorted(float(s.sent_at) for s in sent if group_of(s.email) == "gmail")
        assert min(b - a for a, b in pairwise(paced_gmail)) >= GMAIL_SPACING - 1e-6, service_id
    statuses = Counter(str(s.status) for s in subtasks)
    assert statuses["sent"] + statuses["unknown"] == len(everyone)
