"""Warm-up allowances under concurrency, on the single-threaded embedded server (conditional writes
atomic, as in DynamoDB): dispatchers of one service whose leases overlap (each expires long before
its holder's next look, so the other takes it over mid-run) and bare block reservations racing each
other never pass the day's allowance."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from core.clock import SystemClock, to_datetime, utc_day
from core.dispatch import service_quota
from core.dispatch.dispatcher import DispatchReport, StopReason, dispatch_service
from core.dispatch.warmup import service_day_quota
from core.settings import Settings
from core.storage.models import EmailServiceModel, ServiceUsageModel, SubtaskModel, TaskModel
from local_runner.moto_server import EmbeddedAws
from tests.concurrency.test_dispatcher_crashes import Clients, _campaign, _deps, _recipient
from tests.support.dispatching import World, start_scheduler
from tests.support.planning import seed_service

ALLOWANCE = 30
# Yesterday was day 1: today is day 2 and tomorrow day 3, so a run across midnight keeps the allowance.
SCHEDULE = [ALLOWANCE, ALLOWANCE, ALLOWANCE]
LEASE_SECONDS = 1.5  # shorter than a run: the other worker takes the lease while its holder still sends
BLOCK = 4  # small blocks: many reservations, racing near the allowance's end
RUN_SECONDS = 40.0


def _ramped_service(service_id: str, now: float, *, daily_quota: int) -> None:
    seed_service(service_id, now, sending_rate=0.1, daily_quota=daily_quota)
    yesterday = (to_datetime(now) - timedelta(days=1)).date().isoformat()
    warmup = {"preset": "custom", "schedule": SCHEDULE, "start_day": yesterday}
    EmailServiceModel(service_id).update(actions=[EmailServiceModel.warmup.set(warmup)])


def test_dispatchers_with_overlapping_leases_never_pass_the_days_allowance(
    embedded_aws: EmbeddedAws, aws_server: Settings
) -> None:
    # Given a service of 1,000 a day on a ramp allowing 30 today, and 80 queued
    clock = SystemClock()
    start_scheduler(clock.now())
    world = World(aws_server, clock)
    _ramped_service("svc", clock.now(), daily_quota=1000)
    task_id = _campaign(world, "ann", ["svc"], 80, 0)
    assert service_day_quota(EmailServiceModel.get("svc"), clock.now()).effective == ALLOWANCE

    # When two workers run its dispatcher over and over with leases that expire under them
    runs: list[tuple[str, float, float, DispatchReport]] = []
    lock = threading.Lock()
    done = threading.Event()

    def worker(name: str) -> None:
        clients = Clients.make()
        give_up = time.monotonic() + RUN_SECONDS
        number = 0
        while not done.is_set() and time.monotonic() < give_up:
            number += 1
            deps = _deps(aws_server, clients, owner=f"{name}-{number}", budget=3.0)
            deps.lease_seconds = LEASE_SECONDS
            deps.batch_size = BLOCK
            started = time.monotonic()
            report = dispatch_service("svc", deps)
            with lock:
                runs.append((name, started, time.monotonic(), report))
            if report.stop_reason is StopReason.WARMUP_ALLOWANCE:
                done.set()
            elif report.stop_reason is StopReason.LEASE_BUSY:
                time.sleep(0.05)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(worker, ["one", "two"]))

    # Then both workers sent, and two invocations held the lease at the same time
    held = [(name, start, end) for name, start, end, report in runs if report.stop_reason is not StopReason.LEASE_BUSY]
    assert {name for name, _, _, report in runs if report.sent} == {"one", "two"}, runs
    assert any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in held for b in held), held
    # and a last clean run finds the day's allowance spent, the task waiting with the reason
    assert done.is_set()
    final = dispatch_service("svc", _deps(aws_server, Clients.make(), owner="last", budget=3.0))
    assert (final.sent, final.stop_reason) == (0, StopReason.WARMUP_ALLOWANCE)
    # Every unit of the allowance is an email SES took (`sent`) or one a takeover could not rule out
    # (`unknown`: claimed under a lease that expired, never sent again); no address got two emails.
    recipients = Counter(_recipient(message) for message in embedded_aws.sent_raw_messages())
    statuses = Counter(str(s.status) for s in SubtaskModel.scan(consistent_read=True))
    assert set(recipients.values()) == {1} and sum(recipients.values()) == statuses["sent"], statuses
    assert statuses["sent"] + statuses["unknown"] == ALLOWANCE, statuses
    assert statuses["queued"] == 80 - ALLOWANCE, statuses
    used = ServiceUsageModel.get("svc", utc_day(clock.now()), consistent_read=True).used
    assert int(used) == ALLOWANCE
    waiting = TaskModel.get(task_id, consistent_read=True)
    assert (waiting.status, waiting.reason) == ("waiting", "warmup_allowance:svc")
    assert waiting.counts.sent == statuses["sent"]


def test_racing_block_reservations_get_exactly_the_allowance(aws_server: Settings) -> None:
    # Given a ramped service (30 today) and eight reservers asking for blocks of 1 to 8
    now = SystemClock().now()
    _ramped_service("svc", now, daily_quota=1000)
    barrier = threading.Barrier(8)

    def reserve(size: int) -> int:
        got = 0
        barrier.wait()
        while True:
            service = EmailServiceModel.get("svc", consistent_read=True)
            block = service_quota.reserve_block("svc", service_day_quota(service, now).effective, size, now)
            if block == 0:
                return got
            got += block

    # When they all reserve until nothing is left
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(reserve, range(1, 9)))

    # Then together they got exactly the allowance, and the day's usage says so
    assert sum(got) == ALLOWANCE
    assert int(ServiceUsageModel.get("svc", utc_day(now), consistent_read=True).used) == ALLOWANCE
