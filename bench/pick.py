"""The pick with issue 12's features on vs off: picks per second of the pick alone, and the real
dispatcher's emails per second and DynamoDB requests per email.

**Off**: weights 1, no priorities, no domain limits, no interleaving, no send window. **On**: user
weights 3:1:1..., task priorities, a gmail limit, interleaving, a 09:00-17:00 window in each
recipient's zone with zones spread so that some are shut. Half the recipients are on gmail.com /
googlemail.com, the rest on a mix of other providers and domains.

1. **Picks per second, no AWS.** A real `core.dispatch.dispatcher.Dispatcher` built from in-memory
   items (service, scheduler state, tasks, subtasks) on an injected clock: its `has_ready` /
   `choose` / `scan` / `refill` over `core.dispatch.candidates.Candidates`, with `Fairness.next_work`,
   `DomainThrottles` and `SendWindow` as the dispatcher configures them. The only stub is the queue
   read: `SubtaskModel.queue.query` answers from an in-memory copy of the sparse `queue` index
   (`MemoryQueue`), counting pages and items. `reload()` reads AWS, so its last lines are repeated
   (`throttles.configure`, `fairness.replace_tasks`); the loop calls its `picker.pick`, what `claim_next` calls (the
   planned moment `pick_at` one interval apart, `next_work`, `pop`, `throttles.picked`), then each
   pick is "sent" at its planned moment (`throttles.sent`, out of the queue) where `claim_next`
   would claim it. 10 users x 2 tasks x 2,000 queued at a planned 10/s; gmail at 60 a minute on;
   8,000 picks in 5 rounds (quick: 4,000 in 3).
   Only the pick is timed (median of rounds).
2. **Requests per email, embedded AWS** (bench.harness, as bench/dispatch.py): fresh tables, one
   service, 10 users each with one planned task of the same recipients, the dispatcher with the
   Lambda's dependencies for one invocation of a fixed budget, at 10/s and at no pacing, off then
   on. On: gmail at 300 a minute (one send per 0.2 s: at 10/s gmail, half the queue, is at its limit
   the whole run), weights 3:1:1..., priorities, interleaving, and a 09:00-17:00 window in which four
   zones of five are open now (zones chosen by the current UTC hour). Emails per second over the
   invocation's wall clock, DynamoDB requests per sent email by operation, and the queue reads
   (pages and items of the `queue` index) per email.

    .venv/bin/python -m bench.pick [--quick]
"""

from __future__ import annotations

import bisect
import contextlib
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from unittest import mock

from bench import harness
from bench.harness import (
    Call,
    EmbeddedWorld,
    SendLog,
    achieved_rate,
    by_operation,
    max_in_window,
    rounded,
    row,
    run_dispatcher,
    say,
    ses_client,
    warm_up,
)

if TYPE_CHECKING:
    from core.dispatch.dispatcher import Dispatcher
    from core.dispatch.fairness import TaskWork
    from core.storage.models import SubtaskModel

NAME = "pick"
SERVICE_ID = "svc_pick"
NO_PACING = 0.0001  # core.api.schemas.MIN_SENDING_RATE
TARGET_PICK_RATIO = 0.2  # picks/s on >= 20% of off: the features may cost, not dominate
TARGET_REQUESTS_RATIO = 1.25  # DynamoDB requests per email on <= 1.25 x off, at each pace

GMAIL_DOMAINS = ("gmail.com", "googlemail.com")
OTHER_DOMAINS = (
    "yahoo.com",
    "aol.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "example.org",
    "example.net",
    "corp.example",
    "mail.example.com",
    "shop.example.io",
)
WINDOW = {"start": "09:00", "end": "17:00", "timezone": "UTC", "quiet_days": []}
PRIORITIES = ("urgent", "normal", "bulk")

# Part 1's moment (a Tuesday, 15:00 UTC) and zones: 07:00 in Los Angeles and 00:00 in Tokyo are
# outside 09:00-17:00; New York, London, UTC and Berlin are inside for the whole run (< 1 hour).
PICK_START = datetime(2026, 12, 1, 15, 0, tzinfo=UTC).timestamp()
PICK_ZONES = ("America/Los_Angeles", "America/New_York", "Europe/London", "UTC", "Europe/Berlin", "Asia/Tokyo")
# Part 2 runs on the real clock: zones at these local hours now (four inside the window, one not).
OPEN_HOURS = (10, 12, 14, 15)
SHUT_HOUR = 3


# ---------------------------------------------------------------- pure pieces


def recipient_domain(rng: random.Random) -> str:
    """Half gmail (gmail.com or googlemail.com), half one of the other domains."""
    if rng.random() < 0.5:
        return rng.choice(GMAIL_DOMAINS)
    return rng.choice(OTHER_DOMAINS)


def zone_at_local_hour(utc_hour: int, local_hour: int) -> str:
    """A fixed-offset zone (IANA `Etc/GMT...`, whose sign is inverted) where it is `local_hour`
    while it is `utc_hour` in UTC."""
    offset = (local_hour - utc_hour + 12) % 24 - 12  # -12 .. +11 hours
    if offset == 0:
        return "Etc/GMT"
    return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def zones_now(now: float) -> tuple[list[str], str]:
    """Zones where it is now each of OPEN_HOURS (inside 09:00-17:00 for the next hour at least) and
    one where it is SHUT_HOUR."""
    hour = datetime.fromtimestamp(now, UTC).hour
    return [zone_at_local_hour(hour, local) for local in OPEN_HOURS], zone_at_local_hour(hour, SHUT_HOUR)


def user_weights(users: list[str]) -> dict[str, int]:
    """3:1:1...: the first user is a VIP."""
    return {user: 3 if index == 0 else 1 for index, user in enumerate(users)}


def requests_ratio_met(off: float, on: float) -> bool:
    return on <= TARGET_REQUESTS_RATIO * off


def pick_ratio_met(ratio: float) -> bool:
    """`ratio`: on over off picks/s, the median of the rounds' paired ratios (as reported)."""
    return ratio >= TARGET_PICK_RATIO


@dataclass
class MemoryPage:
    """What `SubtaskModel.queue.query` returns, as the dispatcher uses it: the items, then
    `last_evaluated_key` (None at the end of the queue)."""

    items: list[SubtaskModel]
    last_evaluated_key: dict[str, Any] | None

    def __iter__(self) -> Iterator[SubtaskModel]:
        return iter(self.items)


@dataclass
class MemoryQueue:
    """The sparse `queue` index in memory: queued subtasks by queue key in contact-id order."""

    entries: dict[str, list[SubtaskModel]] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)
    pages: int = 0
    items_read: int = 0

    def add(self, queue_key: str, subtask: SubtaskModel) -> None:
        ids = self.ids.setdefault(queue_key, [])
        at = bisect.bisect_left(ids, subtask.contact_id)
        ids.insert(at, subtask.contact_id)
        self.entries.setdefault(queue_key, []).insert(at, subtask)

    def remove(self, queue_key: str, subtask: SubtaskModel) -> None:
        """Out of the index (claimed: no longer `queued`)."""
        ids = self.ids[queue_key]
        at = bisect.bisect_left(ids, subtask.contact_id)
        if at < len(ids) and ids[at] == subtask.contact_id:
            del ids[at]
            del self.entries[queue_key][at]

    def query(
        self, hash_key: str, limit: int | None = None, last_evaluated_key: Mapping[str, Any] | None = None, **_: Any
    ) -> MemoryPage:
        ids = self.ids.get(hash_key, [])
        start = bisect.bisect_right(ids, last_evaluated_key["contact_id"]["S"]) if last_evaluated_key else 0
        end = len(ids) if limit is None else min(len(ids), start + limit)
        items = self.entries.get(hash_key, [])[start:end]
        self.pages += 1
        self.items_read += len(items)
        last = None
        if end < len(ids) and items:
            last = {
                "queue_key": {"S": hash_key},
                "contact_id": {"S": items[-1].contact_id},
                "partition": {"S": items[-1].partition},
            }
        return MemoryPage(items, last)


# ---------------------------------------------------------------- 1. picks per second, no AWS


class ManualClock:
    def __init__(self, now: float) -> None:
        self.at = now

    def now(self) -> float:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.at += max(0.0, seconds)


@dataclass(frozen=True)
class PickSetup:
    users: int
    tasks_per_user: int
    per_task: int
    picks: int
    rounds: int
    interval: float = 0.1  # planned pace: 10/s
    gmail_per_minute: int = 60


def pick_setup(quick: bool) -> PickSetup:
    if quick:
        return PickSetup(users=10, tasks_per_user=2, per_task=2_000, picks=4_000, rounds=3)
    return PickSetup(users=10, tasks_per_user=2, per_task=2_000, picks=8_000, rounds=5)


def pick_dispatcher(setup: PickSetup, on: bool, queue: MemoryQueue) -> Dispatcher:
    """A Dispatcher on in-memory items, configured as reload() would from them, its queue in `queue`."""
    from core.dispatch.dispatcher import Dispatcher, DispatcherDeps
    from core.dispatch.fairness import TaskWork
    from core.dispatch.send_windows import SendWindow
    from core.storage.ids import queue_key
    from core.storage.models import EmailServiceModel, SchedulerStateModel, SenderModel, SubtaskModel, TaskModel

    clock = ManualClock(PICK_START)
    limits = {"gmail": {"per_minute": setup.gmail_per_minute}} if on else None
    service = EmailServiceModel(
        SERVICE_ID,
        name=SERVICE_ID,
        region="us-east-1",
        sending_rate=setup.interval,
        daily_quota=10_000_000,
        enabled=True,
        is_healthy=True,
        domain_limits=limits,
        interleave_domains=on,
    )
    deps = DispatcherDeps(
        clock=clock,
        ses=None,
        dynamodb=None,
        subtasks_table="SubtasksTable",
        owner="bench-pick",
        budget_seconds=3600.0,
        lease_seconds=3615.0,
        max_retries=3,
        retry_delay=60.0,
        batch_size=50,  # core.settings.Settings.batch_size's default: the queue read's page
        unsubscribe_base_url="https://api.example.com/v1/unsubscribe",
        unsubscribe_signing_key="bench",
    )
    dispatcher = Dispatcher(service, deps, SchedulerStateModel(f"service#{SERVICE_ID}"))
    dispatcher.picker.throttles.configure(limits, None, on, clock.now(), deps.deferral_policy)
    rng = random.Random(12)
    users = [f"user{index:02d}" for index in range(setup.users)]
    works: dict[str, TaskWork] = {}
    for user_index, user in enumerate(users):
        sender = SenderModel(user, "snd_1", email="news@news.example.com", name="News")
        for task_index in range(setup.tasks_per_user):
            task_id = f"task_{user}_{task_index}"
            priority = PRIORITIES[(user_index + task_index) % len(PRIORITIES)] if on else None
            task = TaskModel(task_id, user_id=user, priority=priority, template_ids=["tpl_1"])
            window = SendWindow.from_item(dict(WINDOW)) if on else None
            works[task_id] = TaskWork(task=task, template={}, sender=sender, window=window)
            key = queue_key(SERVICE_ID, task_id)
            for number in range(setup.per_task):
                queue.add(
                    key,
                    SubtaskModel(
                        f"{task_id}#00",
                        f"ct_{rng.getrandbits(64):016x}",  # hashed ids: no order by domain or zone
                        task_id=task_id,
                        user_id=user,
                        email=f"p{number}@{recipient_domain(rng)}",
                        timezone=rng.choice(PICK_ZONES),
                        template_id="tpl_1",
                        service_id=SERVICE_ID,
                        status="queued",
                        queue_key=key,
                        next_attempt_at=0,
                        seq=number,
                    ),
                )
    dispatcher.picker.works = works
    dispatcher.picker.fairness.replace_tasks(works, user_weights(users) if on else None)
    return dispatcher


@dataclass
class PickRun:
    picks: int = 0
    seconds: float = 0.0  # in the pick only
    empty_looks: int = 0  # looks that found nothing to pick (everything held back)
    simulated_seconds: float = 0.0
    by_group: Counter[str] = field(default_factory=Counter)
    by_user: Counter[str] = field(default_factory=Counter)
    gmail_times: list[float] = field(default_factory=list)
    outside_window: int = 0  # picks planned at a moment outside their recipient's window (must be 0)


def run_picks(dispatcher: Dispatcher, queue: MemoryQueue, wanted: int, interval: float) -> PickRun:
    """The dispatcher's own pick (`Picker.pick`, what the dispatcher's claim_next calls) until `wanted` picks: a
    claim's worth (CLAIM_AHEAD_SECONDS of pace) at a time, each pick checked at its planned moment; then
    the picks are sent at those moments."""
    from core.dispatch.candidates import item_key
    from core.dispatch.claims import CLAIM_AHEAD_SECONDS, CLAIM_BATCH_LIMIT
    from core.mail.providers import group_of
    from core.storage.ids import queue_key

    clock = dispatcher.deps.clock
    assert isinstance(clock, ManualClock)
    started_at = clock.now()
    size = max(1, min(CLAIM_BATCH_LIMIT, round(CLAIM_AHEAD_SECONDS / interval)))
    run = PickRun()
    slot = clock.now()
    while run.picks < wanted:
        now = clock.now()
        first_slot = max(now, slot)
        began = time.perf_counter()
        picks = dispatcher.picker.pick(min(size, wanted - run.picks), first_slot, interval)
        run.seconds += time.perf_counter() - began
        if not picks:  # the send loop waits for what is held back to open
            run.empty_looks += 1
            opens = dispatcher.picker.gated_until(now)
            if opens - now > 3600:
                break  # nothing left to pick within the hour
            clock.at = max(opens, now + 0.01)
            continue
        for index, (work, subtask) in enumerate(picks):  # claimed, then sent at the planned moments
            at = first_slot + index * interval
            group = dispatcher.picker.picked_key.pop(item_key(subtask))[0] or group_of(subtask.email)
            dispatcher.picker.throttles.sent(group, at)
            queue.remove(queue_key(SERVICE_ID, work.task.task_id), subtask)
            run.by_group["gmail" if group_of(subtask.email) == "gmail" else "other"] += 1
            run.by_user[work.task.user_id] += 1
            if group_of(subtask.email) == "gmail":
                run.gmail_times.append(at)
            if work.window is not None and not work.window.is_open(subtask.timezone, at):
                run.outside_window += 1
        run.picks += len(picks)
        slot = first_slot + len(picks) * interval
        clock.at = slot
    run.simulated_seconds = clock.now() - started_at
    return run


@contextlib.contextmanager
def queue_in_memory(queue: MemoryQueue) -> Iterator[None]:
    """The one stub: the dispatcher's queue reads answered by `queue` instead of DynamoDB."""
    from core.storage.models import SubtaskModel

    with mock.patch.object(SubtaskModel.queue, "query", queue.query):
        yield


def pick_round(setup: PickSetup, on: bool) -> dict[str, Any]:
    queue = MemoryQueue()
    dispatcher = pick_dispatcher(setup, on, queue)
    with queue_in_memory(queue):
        run = run_picks(dispatcher, queue, setup.picks, setup.interval)
    return {
        "picks": run.picks,
        "pick_seconds": round(run.seconds, 4),
        "picks_per_second": round(run.picks / run.seconds, 1) if run.seconds else None,
        "queue_pages_per_1000_picks": round(1000 * queue.pages / max(1, run.picks), 2),
        "queue_items_read_per_pick": round(queue.items_read / max(1, run.picks), 3),
        "empty_looks": run.empty_looks,
        "simulated_seconds": round(run.simulated_seconds, 1),
        "gmail_share": round(run.by_group["gmail"] / max(1, run.picks), 3),
        "gmail_most_in_any_60_s": max_in_window(run.gmail_times, 60.0),
        "outside_window": run.outside_window,
        "picks_by_user": dict(sorted(run.by_user.items())),
    }


def measure_picks(quick: bool) -> dict[str, Any]:
    """Rounds of off then on on fresh items; the medians of the rates and of the per-round ratios."""
    setup = pick_setup(quick)
    rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for number in range(setup.rounds):
        for mode in ("off", "on"):
            say(f"pick: picks/s {mode}, round {number + 1} of {setup.rounds}")
            rounds[mode].append(pick_round(setup, mode == "on"))
    figures: dict[str, Any] = {
        "queued": setup.users * setup.tasks_per_user * setup.per_task,
        "users": setup.users,
        "tasks_per_user": setup.tasks_per_user,
        "rounds": setup.rounds,
    }
    for mode, results in rounds.items():
        rates = [float(result["picks_per_second"]) for result in results]
        middle = sorted(results, key=lambda result: float(result["picks_per_second"]))[len(results) // 2]
        figures[mode] = {**middle, "picks_per_second": round(statistics.median(rates), 1), "per_round": rates}
    # Paired per round (off then on, one after the other): a ratio of medians mixes rounds of
    # different machine load.
    ratios = [on / off for off, on in zip(figures["off"]["per_round"], figures["on"]["per_round"], strict=True)]
    figures["ratio"] = round(statistics.median(ratios), 3)
    figures["ratio_per_round"] = [round(ratio, 3) for ratio in ratios]
    return figures


# ---------------------------------------------------------------- 2. requests per email, embedded AWS


@dataclass(frozen=True)
class Pace:
    label: str
    interval: float
    users: int
    per_user: int
    budget: float  # the one invocation's budget
    rounds: int = 1  # off-then-on pairs; the pair with the median ratio is reported


def paces(quick: bool) -> list[Pace]:
    if quick:
        return [Pace("10/s", 0.1, 10, 30, 8.0), Pace("none", NO_PACING, 10, 100, 2.5)]
    # No pacing is the noisier pace (claim conflicts with the record writer, the finish's share).
    return [Pace("10/s", 0.1, 10, 80, 30.0), Pace("none", NO_PACING, 10, 300, 8.0, rounds=3)]


@dataclass(frozen=True)
class WireCall:
    at: float  # time.time() when its reply came
    operation: str
    index: str | None
    items: int


@dataclass
class WireLog:
    """The dispatcher's DynamoDB requests on the wire, each with when it ended, its index and how many
    items it returned: queue reads (Query on the `queue` index) and what came after the last send
    (the invocation's finish: claimed but unsent emails given back, counters, the lease)."""

    calls: list[WireCall] = field(default_factory=list)

    def observe(self, call: Call) -> None:
        if call.service != "dynamodb":
            return
        body = call.json_body() if call.operation == "Query" else {}
        items = len((call.parsed or {}).get("Items", []))
        self.calls.append(WireCall(time.time(), call.operation, body.get("IndexName"), items))

    def queue_reads(self) -> tuple[int, int]:
        """(pages, items) of the `queue` index."""
        reads = [call for call in self.calls if call.operation == "Query" and call.index == "queue"]
        return len(reads), sum(call.items for call in reads)

    def after(self, moment: float) -> dict[str, int]:
        """Requests by operation that ended after `moment`."""
        return dict(sorted(Counter(call.operation for call in self.calls if call.at > moment).items()))


def seed_pick_campaign(settings: Any, pace: Pace, on: bool, now: float) -> dict[str, str]:
    """One service, `pace.users` users with one planned task each (same recipients off and on);
    on: the features set before planning (the planner copies each contact's zone for the window)."""
    from core.clock import SystemClock
    from core.storage.ids import contact_id_for
    from core.storage.models import ContactModel, EmailServiceModel, TaskModel, UserModel
    from tests.support.dispatching import plan_now, seed_sender_and_template, start_scheduler
    from tests.support.planning import seed_service, seed_task, seed_user

    clock = SystemClock()
    seed_service(SERVICE_ID, now, sending_rate=pace.interval, daily_quota=100_000_000)
    if on:
        EmailServiceModel(SERVICE_ID).update(
            actions=[
                EmailServiceModel.domain_limits.set({"gmail": {"per_minute": 300}}),
                EmailServiceModel.interleave_domains.set(True),
            ]
        )
    else:
        EmailServiceModel(SERVICE_ID).update(actions=[EmailServiceModel.interleave_domains.set(False)])
    open_zones, shut_zone = zones_now(now)
    zones = [*open_zones, shut_zone]
    users = [f"user{index:02d}" for index in range(pace.users)]
    weights = user_weights(users)
    tasks: dict[str, str] = {}
    rng = random.Random(12)
    for index, user in enumerate(users):
        seed_user(user, pace.per_user * 10, [SERVICE_ID], now)
        if on:
            UserModel(user).update(actions=[UserModel.weight.set(weights[user])])
        seed_sender_and_template(user, now)
        with ContactModel.batch_write() as batch:
            for number in range(pace.per_user):
                email = f"{user}.p{number}@{recipient_domain(rng)}"
                batch.save(
                    ContactModel(
                        user,
                        contact_id_for(email),
                        email=email,
                        name=f"Person {number}",
                        tags=["list"],
                        attributes={"number": number},
                        timezone=zones[number % len(zones)],
                        status="subscribed",
                        created_at=now,
                        updated_at=now,
                    )
                )
        task = seed_task(user, now, include=["list"])
        if on:
            task.update(
                actions=[
                    TaskModel.priority.set(PRIORITIES[index % len(PRIORITIES)]),
                    TaskModel.send_window.set(dict(WINDOW)),
                    TaskModel.window_planned.set({}),  # per-zone counters, as create_task starts them
                    TaskModel.window_done.set({}),
                ]
            )
        plan_now(task.task_id, settings, clock)
        tasks[user] = task.task_id
    start_scheduler(now)
    return tasks


def dispatch_run(world: EmbeddedWorld, pace: Pace, on: bool) -> dict[str, Any]:
    from core.mail.providers import group_of
    from core.storage.models import SubtaskModel

    settings = world.fresh()
    now = time.time()
    seed_pick_campaign(settings, pace, on, now)
    _, shut_zone = zones_now(now)
    log = SendLog()
    wire = WireLog()
    world.counter.take()
    world.counter.observers.append(wire.observe)
    try:
        run = run_dispatcher(
            world, SERVICE_ID, ses=ses_client(log), log=log, budget_seconds=pace.budget, max_invocations=1
        )
    finally:
        world.counter.observers.remove(wire.observe)
    counts = world.counter.take()
    dynamodb = by_operation(counts, "dynamodb")
    emails = max(1, run.sent)
    pages, items = wire.queue_reads()
    finish = wire.after(run.sends[-1].at) if run.sends else {}
    with world.counter.uncounted():
        sent = [s for s in SubtaskModel.scan() if s.status == "sent"]
    gmail_times = [float(s.sent_at) for s in sent if group_of(s.email) == "gmail"]
    return {
        "features": "on" if on else "off",
        "queued": pace.users * pace.per_user,
        "budget_seconds": pace.budget,
        "emails": run.sent,
        "lambda_seconds": round(run.lambda_seconds, 3),
        "emails_per_second": round(run.sent / run.lambda_seconds, 2) if run.lambda_seconds else None,
        "achieved_per_second": rounded(achieved_rate(run.sends), 2),
        "stop_reason": run.reports[-1].stop_reason.value if run.reports else None,
        "dynamodb_requests_per_email": round(sum(dynamodb.values()) / emails, 3),
        "dynamodb_requests_per_email_by_operation": {op: round(n / emails, 3) for op, n in dynamodb.items()},
        "queue_pages_per_email": round(pages / emails, 3),
        "queue_items_read_per_email": round(items / emails, 2),
        # After the last send: the claimed but unsent emails given back (a GetItem of each task and a
        # TransactWriteItems per task), the last counters, the lease. Fixed per invocation.
        "requests_after_last_send": finish,
        "gmail_share": round(len(gmail_times) / max(1, len(sent)), 3),
        "gmail_most_in_any_60_s": max_in_window(gmail_times, 60.0),
        "sent_in_shut_zone": sum(1 for s in sent if s.timezone == shut_zone),
        "sent_by_user": dict(sorted(Counter(s.user_id for s in sent).items())),
    }


def measure_requests(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with EmbeddedWorld() as world:
        warm_up(world)
        for pace in paces(quick):
            pairs = []
            for number in range(pace.rounds):
                pair: dict[str, Any] = {}
                for mode in ("off", "on"):
                    say(
                        f"pick: {pace.label}, {pace.users} x {pace.per_user} queued, features {mode},"
                        f" round {number + 1} of {pace.rounds}"
                    )
                    pair[mode] = dispatch_run(world, pace, mode == "on")
                pair["requests_ratio"] = round(
                    pair["on"]["dynamodb_requests_per_email"] / pair["off"]["dynamodb_requests_per_email"], 3
                )
                pairs.append(pair)
            middle = sorted(pairs, key=lambda pair: float(pair["requests_ratio"]))[len(pairs) // 2]
            results[pace.label] = {
                **middle,
                "rounds": pace.rounds,
                "requests_ratio_per_round": [pair["requests_ratio"] for pair in pairs],
            }
    return results


# ---------------------------------------------------------------- summary


def summary(picks: dict[str, Any], requests: dict[str, Any], quick: bool) -> dict[str, Any]:
    off, on = picks["off"], picks["on"]
    rows = [
        row(
            f"picks/s of the pick alone, {picks['queued']:,} queued: features on vs off",
            f"{on['picks_per_second']:,.0f} vs {off['picks_per_second']:,.0f} (medians); {picks['ratio']:.2f}x"
            " (median of the rounds' ratios)",
            f">= {TARGET_PICK_RATIO}x",
            pick_ratio_met(float(picks["ratio"])),
        ),
        row(
            "queue pages read per 1,000 picks (page of 50): on vs off",
            f"{on['queue_pages_per_1000_picks']:.1f} vs {off['queue_pages_per_1000_picks']:.1f}",
        ),
    ]
    for label, figures in requests.items():
        off_run, on_run = figures["off"], figures["on"]
        top = ", ".join(
            f"{op} {n:.2f}"
            for op, n in sorted(on_run["dynamodb_requests_per_email_by_operation"].items(), key=lambda item: -item[1])[
                :3
            ]
        )
        rounds = f", median of {figures['rounds']} pairs" if figures.get("rounds", 1) > 1 else ""
        rows.append(
            row(
                f"DynamoDB requests per email at {label} ({on_run['emails']} vs {off_run['emails']} emails{rounds}):"
                " on vs off",
                f"{on_run['dynamodb_requests_per_email']:.2f} ({top}) vs {off_run['dynamodb_requests_per_email']:.2f}"
                f" = {figures['requests_ratio']:.2f}x",
                f"<= {TARGET_REQUESTS_RATIO}x",
                requests_ratio_met(off_run["dynamodb_requests_per_email"], on_run["dynamodb_requests_per_email"]),
            )
        )
        rows.append(
            row(
                f"at {label}, on vs off: emails/s; queue Query pages and items read per email",
                f"{on_run['emails_per_second']} vs {off_run['emails_per_second']};"
                f" {on_run['queue_pages_per_email']:.3f} vs {off_run['queue_pages_per_email']:.3f} pages,"
                f" {on_run['queue_items_read_per_email']} vs {off_run['queue_items_read_per_email']} items",
            )
        )
        rows.append(
            row(
                f"at {label}, on vs off: requests after the last send (the finish, once per invocation)",
                f"{sum(on_run['requests_after_last_send'].values())}"
                f" vs {sum(off_run['requests_after_last_send'].values())}",
            )
        )
    return {
        "name": NAME,
        "quick": quick,
        "picks_per_second": {"off": off["picks_per_second"], "on": on["picks_per_second"]},
        "pick_ratio": picks["ratio"],
        "requests_per_email": {
            label: {mode: figures[mode]["dynamodb_requests_per_email"] for mode in ("off", "on")}
            for label, figures in requests.items()
        },
        "picks": picks,
        "paces": requests,
        "target": {"pick_ratio": TARGET_PICK_RATIO, "requests_ratio": TARGET_REQUESTS_RATIO},
        "met": all(line["met"] for line in rows if line["met"] is not None),
        "rows": rows,
    }


def measure(quick: bool = False) -> dict[str, Any]:
    return summary(measure_picks(quick), measure_requests(quick), quick)


def main(argv: list[str] | None = None) -> None:
    harness.cli(measure, __doc__, argv)


if __name__ == "__main__":
    main()
