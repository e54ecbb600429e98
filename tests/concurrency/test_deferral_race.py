"""Provider deferrals recorded by concurrent events (a burst of DeliveryDelay notifications handled
by several copies of the events function) on the single-threaded embedded AWS, where each request is
atomic as in DynamoDB: a group's level rises once per step however many race, the map is created
once on an item that had none, and every group racing in gets its entry."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from core.deliverability.deferrals import Change, DeferralPolicy, Recorded, record_deferral
from core.settings import Settings
from core.storage.models import EmailServiceModel
from tests.support.planning import seed_service

pytestmark = pytest.mark.concurrency

WORKERS = 8
POLICY = DeferralPolicy(cooldown_seconds=1800, step_seconds=300, max_level=4)
NOW = 1_796_000_000.0

T = TypeVar("T")


def _together(jobs: list[Callable[[], T]]) -> list[T]:
    """Runs the jobs at once, each in its own thread, released together."""
    start = threading.Barrier(len(jobs))

    def run(job: Callable[[], T]) -> T:
        start.wait()
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def _stored(service_id: str) -> dict[str, dict[str, float]]:
    stored = EmailServiceModel.get(service_id, consistent_read=True).domain_deferrals
    assert stored is not None
    return {group: dict(entry) for group, entry in stored.as_dict().items()}


def _defer(address: str, now: float) -> Callable[[], Recorded]:
    return lambda: record_deferral("svc_a", address, "IPFailure", now, POLICY, reported_at=now)


def test_a_burst_of_delays_raises_a_group_once_per_step(aws_server: Settings) -> None:
    # Given a service item written before deferrals existed (no map)
    seed_service("svc_a", NOW)

    # When WORKERS delays of gmail mail are recorded at once
    first = _together([_defer(f"reader{n}@gmail.com", NOW + n * 0.001) for n in range(WORKERS)])
    # Then exactly one started the group at level 1; the others only extended it
    assert sorted(r.change for r in first).count(Change.STARTED) == 1
    assert {r.change for r in first} <= {Change.STARTED, Change.EXTENDED, Change.UNCHANGED}
    entry = _stored("svc_a")["gmail"]
    assert entry["level"] == 1 and entry["until"] == entry["since"] + POLICY.cooldown_seconds

    # When, a step later, another burst races
    later = NOW + 1 + POLICY.step_seconds  # a step after whichever of them started it
    second = _together([_defer(f"reader{n}@gmail.com", later) for n in range(WORKERS)])
    # Then the level rose exactly once
    assert [r.change for r in second].count(Change.RAISED) == 1
    entry = _stored("svc_a")["gmail"]
    assert entry == {"level": 2, "since": later, "until": later + POLICY.cooldown_seconds}


def test_groups_racing_onto_an_item_without_the_map_each_get_their_entry(aws_server: Settings) -> None:
    # Given a service item without the map
    seed_service("svc_a", NOW)
    domains = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "example.org", "example.net"]

    # When one delay per group races (the first creates the map, the others add to it)
    results = _together([_defer(f"someone@{domain}", NOW) for domain in domains])

    # Then every group started at level 1, none was lost
    assert [r.change for r in results] == [Change.STARTED] * len(domains)
    stored = _stored("svc_a")
    assert sorted(stored) == sorted(["gmail", "yahoo", "microsoft", "apple", "example.org", "example.net"])
    assert {entry["level"] for entry in stored.values()} == {1}
