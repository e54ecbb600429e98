"""Weighted fairness per service, with two services' dispatchers sending at once on the
single-threaded embedded server: each service keeps its own pointer (with the picks left in a turn)
and shares its own pace by the weights of the users with work on it, whatever the other service
does; two overlapping invocations of one service still leave one sequence, since only the lease
holder picks."""

from __future__ import annotations

import threading
from collections import Counter

from core.clock import SystemClock
from core.dispatch.dispatcher import DispatchReport, StopReason, dispatch_service
from core.settings import Settings
from core.storage.models import SubtaskModel, UserModel
from local_runner.moto_server import EmbeddedAws
from tests.concurrency.test_dispatcher_crashes import Clients, _campaign, _deps, _recipient
from tests.support.dispatching import World, start_scheduler
from tests.support.fairness_bound import window_deviation

RATE = 0.01
WEIGHTS = {"vip": 3, "ann": 1, "ben": 1, "cat": 2}
ROUTES = {"vip": ["svc_a", "svc_b"], "ann": ["svc_a", "svc_b"], "ben": ["svc_a", "svc_b"], "cat": ["svc_b"]}
RECIPIENTS = {"vip": 600, "ann": 240, "ben": 240, "cat": 300}


def test_two_services_sending_at_once_each_share_their_pace_by_weight(
    embedded_aws: EmbeddedAws, aws_server: Settings
) -> None:
    # Given vip (3), ann (1) and ben (1) with work on both services, and cat (2) on svc_b only
    clock = SystemClock()
    start_scheduler(clock.now())
    world = World(aws_server, clock)
    for service_id in ("svc_a", "svc_b"):
        world.service(service_id, sending_rate=RATE)
    start = 0
    for user, routes in ROUTES.items():
        _campaign(world, user, routes, RECIPIENTS[user], start)
        UserModel(user).update(actions=[UserModel.weight.set(WEIGHTS[user])])
        start += RECIPIENTS[user]

    # When both services' dispatchers send at once, each with a second, overlapping invocation
    reports: dict[str, DispatchReport] = {}
    errors: list[BaseException] = []

    def run(name: str, service_id: str, budget: float) -> None:
        try:
            reports[name] = dispatch_service(service_id, _deps(aws_server, Clients.make(), owner=name, budget=budget))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [
        threading.Thread(target=run, args=(name, service_id, 6.0))
        for name, service_id in (("a1", "svc_a"), ("b1", "svc_b"), ("a2", "svc_a"), ("b2", "svc_b"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    busy = [name for name, report in reports.items() if report.stop_reason is StopReason.LEASE_BUSY]
    assert len(reports) == 4 and len(busy) <= 2

    # Then each service's sends, in the order they went out while every user there still had work,
    # are within the bound for the users with work on that service: W = 5 on svc_a, W = 7 on svc_b
    # (cat has none on svc_a)
    subtasks = list(SubtaskModel.scan(consistent_read=True))
    sent = sorted((s for s in subtasks if s.status == "sent"), key=lambda s: float(s.sent_at or 0))
    for service_id in ("svc_a", "svc_b"):
        planned = Counter(str(s.user_id) for s in subtasks if s.service_id == service_id)
        order = _while_all_have_work([str(s.user_id) for s in sent if s.service_id == service_id], planned)
        users = {user: weight for user, weight in WEIGHTS.items() if service_id in ROUTES[user]}
        assert len(order) > 50, (service_id, len(order))
        assert set(order) == set(users)
        total = sum(users.values())
        for user, weight in users.items():
            deviation = window_deviation(order, user, weight, total)
            assert deviation.within, (service_id, user, deviation)
        counts = Counter(order)
        assert abs(counts["vip"] - 3 * counts["ann"]) <= 3
    # and nobody got an email twice
    recipients = Counter(_recipient(message) for message in embedded_aws.sent_raw_messages())
    assert len(recipients) == len(sent) and set(recipients.values()) == {1}


def _while_all_have_work(order: list[str], planned: Counter[str]) -> list[str]:
    """The sends up to the one that emptied some user's queue on the service."""
    seen: Counter[str] = Counter()
    for index, user in enumerate(order):
        seen[user] += 1
        if seen[user] == planned[user]:
            return order[: index + 1]
    return order
