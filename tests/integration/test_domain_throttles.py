"""Recipient-domain limits in the real dispatcher on the embedded AWS, with an injected clock: a
provider held to its limit in every minute, the other domains filling the service's pace, places
kept, interleaving by default, spacing kept across invocations and after a crash."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest

from core.mail.mx_groups import MxGroups
from core.mail.providers import group_of
from core.settings import Settings, load_settings
from core.storage.models import EmailServiceModel, SchedulerStateModel, SubtaskModel
from tests.conftest import FakeClock
from tests.support.dispatching import World, plan_now, seed_sender_and_template, sent_subtasks, start_scheduler
from tests.support.planning import seed_addresses, seed_service, seed_task, seed_user

OTHER_DOMAINS = ["example.org", "example.net", "mail.example.com", "corp.example", "yahoo.com", "outlook.com"]


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def campaign(world: World, user_id: str, addresses: list[str], service_id: str, mx: MxGroups | None = None) -> str:
    now = world.clock.now()
    seed_user(user_id, 100_000, [service_id], now)
    seed_sender_and_template(user_id, now)
    seed_addresses(user_id, addresses, now)
    task = seed_task(user_id, now, include=["list"])
    plan_now(task.task_id, world.settings, world.clock, mx)
    return task.task_id


def limited_service(service_id: str, now: float, rate: float, limits: dict[str, Any] | None, **fields: Any) -> None:
    seed_service(service_id, now, sending_rate=rate)
    actions = [EmailServiceModel.domain_limits.set(limits)] if limits else []
    actions += [getattr(EmailServiceModel, name).set(value) for name, value in fields.items()]
    if actions:
        EmailServiceModel(service_id).update(actions=actions)


def half_gmail(count: int) -> list[str]:
    """`count` gmail.com / googlemail.com addresses and `count` of other domains."""
    gmail = [f"g{n}@{'gmail.com' if n % 3 else 'googlemail.com'}" for n in range(count)]
    others = [f"o{n}@{OTHER_DOMAINS[n % len(OTHER_DOMAINS)]}" for n in range(count)]
    return gmail + others


def max_in_any_window(times: list[float], window: float) -> int:
    """The most sends in any half-open window [t, t + window) (it suffices to start at a send)."""
    times = sorted(times)
    best, last = 0, 0
    for first in range(len(times)):
        while last < len(times) and times[last] < times[first] + window:
            last += 1
        best = max(best, last - first)
    return best


def test_a_provider_at_its_limit_waits_while_the_other_domains_fill_the_pace(world: World, clock: FakeClock) -> None:
    """The issue's case: half the recipients on gmail, held to 60 a minute, on a 10/s service."""
    limited_service("svc", clock.now(), 0.1, {"gmail": {"per_minute": 60}})
    task_id = campaign(world, "alice", half_gmail(400), "svc")
    for _ in range(3):
        world.tick("svc", budget=59.0)
        clock.advance(1.0)

    sent = sent_subtasks(task_id)
    gmail = [float(s.sent_at) for s in sent if group_of(s.email) == "gmail"]
    others = [float(s.sent_at) for s in sent if group_of(s.email) != "gmail"]
    assert len(others) == 400  # every other-domain recipient went while gmail waited its turn
    assert max_in_any_window(gmail, 60.0) <= 60
    for minute, count in Counter(int(at // 60) for at in gmail).items():
        assert count <= 60, minute
    assert min(b - a for a, b in in_pairs(sorted(gmail))) >= 1.0 - 1e-9
    # While other domains lasted, the service kept its pace with them and gmail's share.
    first, last_other = min(gmail + others), max(others)
    during = [at for at in gmail + others if at <= last_other]
    assert len(during) >= 0.95 * (last_other - first) / 0.1
    # Nothing twice; everything still queued is gmail, in its place.
    assert len({s.contact_id for s in sent}) == len(sent)
    queued = [s for s in SubtaskModel.scan() if s.status == "queued"]
    assert queued and all(group_of(s.email) == "gmail" for s in queued)
    assert len(sent) + len(queued) == 800


def in_pairs(values: list[float]) -> list[tuple[float, float]]:
    return list(itertools.pairwise(values))


def test_a_limit_counts_across_invocations_and_after_a_crash(world: World, clock: FakeClock) -> None:
    limited_service("svc", clock.now(), 0.05, {"gmail": {"per_minute": 30}})  # one per 2 s
    task_id = campaign(world, "alice", [f"g{n}@gmail.com" for n in range(40)], "svc")

    world.tick("svc", budget=7.0)
    first = sorted(float(s.sent_at) for s in sent_subtasks(task_id))
    world.tick("svc", budget=7.0)  # released cleanly: this holder reads the last gmail send
    both = sorted(float(s.sent_at) for s in sent_subtasks(task_id))
    assert len(first) == 4 and len(both) > len(first)
    assert min(b - a for a, b in in_pairs(both)) >= 2.0 - 1e-9

    # A holder dies without releasing: its journal still lists a batch, and it may have sent to gmail
    # after what it last saved. The next holder counts gmail as sent to at the moment it took over.
    clock.advance(0.5)
    taken_over = clock.now()
    SchedulerStateModel("service#svc").update(
        actions=[
            SchedulerStateModel.lease_owner.set("dead-holder"),
            SchedulerStateModel.lease_until.set(taken_over - 1),
            SchedulerStateModel.inflight.set({"dead-holder#1": []}),
            SchedulerStateModel.domain_sent.set({"gmail": taken_over - 100}),
        ]
    )
    world.tick("svc", budget=7.0)
    after = sorted(float(s.sent_at) for s in sent_subtasks(task_id) if float(s.sent_at) >= taken_over)
    assert after and after[0] >= taken_over + 2.0 - 1e-9


def test_recipients_interleave_by_default_and_not_when_switched_off(world: World, clock: FakeClock) -> None:
    addresses = [f"a{n}@gmail.com" for n in range(30)] + [f"b{n}@yahoo.com" for n in range(30)]
    seed_service("mixed", clock.now(), sending_rate=0.01)
    task_id = campaign(world, "alice", addresses, "mixed")
    world.tick("mixed", budget=30.0)
    groups = [group_of(s.email) for s in sent_subtasks(task_id)]
    assert len(groups) == 60
    assert all(a != b for a, b in itertools.pairwise(groups))  # never twice in a row

    limited_service("plain", clock.now(), 0.01, None, interleave_domains=False)
    other = campaign(world, "bob", [a.replace("@", "x@") for a in addresses], "plain")
    world.tick("plain", budget=30.0)
    plain = sent_subtasks(other)
    # Switched off: queue (contact id) order, whatever the domains.
    assert [s.contact_id for s in plain] == sorted(s.contact_id for s in plain)


def test_a_deferral_tightens_the_group_for_a_while(world: World, clock: FakeClock) -> None:
    until = clock.now() + 600
    limited_service(
        "svc",
        clock.now(),
        0.1,
        {"gmail": {"per_minute": 60}},
        domain_deferrals={"gmail": {"level": 1, "since": clock.now(), "until": until}},
    )
    task_id = campaign(world, "alice", [f"g{n}@gmail.com" for n in range(20)], "svc")
    world.tick("svc", budget=20.0)
    times = sorted(float(s.sent_at) for s in sent_subtasks(task_id))
    assert len(times) == 10  # 60/min halved: one every 2 s for 20 s
    assert min(b - a for a, b in in_pairs(times)) >= 2.0 - 1e-9

    clock.current = until + 1  # the deferral is over: back to one a second
    world.tick("svc", budget=5.0)
    later = sorted(float(s.sent_at) for s in sent_subtasks(task_id) if float(s.sent_at) > until)
    assert len(later) == 5


# What DNS would answer: two companies on Google Workspace, one on Microsoft 365, one self-hosted.
MX_RECORDS = {
    "acme.example": ["aspmx.l.google.com", "alt1.aspmx.l.google.com"],
    "initech.example": ["alt2.aspmx.l.google.com"],
    "contoso.example": ["contoso-example.mail.protection.outlook.com"],
    "selfhosted.example": ["mx1.selfhosted.example"],
}


def test_domains_received_by_gmail_by_mx_share_gmails_limit(world: World, clock: FakeClock) -> None:
    # Given gmail held to 60 a minute, and a list of gmail.com, two companies whose MX is Google's,
    # one on Microsoft 365 and one self-hosted, planned with MX grouping
    limited_service("svc", clock.now(), 0.1, {"gmail": {"per_minute": 60}})
    domains = ["gmail.com", "acme.example", "initech.example", "contoso.example", "selfhosted.example"]
    addresses = [f"p{n}@{domains[n % len(domains)]}" for n in range(250)]
    mx = MxGroups(lambda domain: MX_RECORDS.get(domain, []))
    task_id = campaign(world, "alice", addresses, "svc", mx)
    groups = {s.email.rpartition("@")[2]: s.group for s in SubtaskModel.scan()}
    assert groups == {
        "gmail.com": None,  # a provider's own domain: known without a lookup
        "acme.example": "gmail",
        "initech.example": "gmail",
        "contoso.example": "microsoft",
        "selfhosted.example": None,
    }
    assert mx.lookups == 4

    # When the service sends for two minutes
    for _ in range(2):
        world.tick("svc", budget=59.0)
        clock.advance(1.0)

    # Then gmail.com and the Workspace companies together kept gmail's limit, one a second
    sent = sent_subtasks(task_id)
    on_gmail = sorted(float(s.sent_at) for s in sent if (s.group or group_of(s.email)) == "gmail")
    assert len(on_gmail) >= 100 and max_in_any_window(on_gmail, 60.0) <= 60
    assert min(b - a for a, b in in_pairs(on_gmail)) >= 1.0 - 1e-9
    # while the others went at the service's pace, and what waits is gmail's
    others = [s for s in sent if (s.group or group_of(s.email)) != "gmail"]
    assert len(others) == 100
    queued = [s for s in SubtaskModel.scan() if s.status == "queued"]
    assert queued and {(s.group or group_of(s.email)) for s in queued} == {"gmail"}


def test_the_planner_function_groups_by_mx_only_when_the_stack_turns_it_on(
    aws: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import planner_handler

    def planner_mx() -> MxGroups | None:
        load_settings.cache_clear()  # settings are read once per cold start: this function starts cold
        planner_handler.runtime.cache_clear()
        try:
            return planner_handler.runtime().mx
        finally:
            load_settings.cache_clear()
            planner_handler.runtime.cache_clear()

    monkeypatch.delenv("MX_GROUPING", raising=False)
    assert planner_mx() is None  # the default: no DNS lookups
    monkeypatch.setenv("MX_GROUPING", "true")
    assert isinstance(planner_mx(), MxGroups)
