"""Recipient local-time windows in the real dispatcher on the embedded AWS, over a simulated day
with an injected clock: every send inside its recipient's local window, the service's daily quota
kept across the UTC day, places kept, and what waits for its window counted for stats."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from core.api.auth import Caller
from core.api.failures import RetryDeps, retry_failed
from core.dispatch.send_windows import waiting_for_window
from core.settings import Settings
from core.states import SuppressionReason
from core.storage.ids import contact_id_for
from core.storage.models import ServiceUsageModel, SubtaskModel, SuppressionModel, TaskModel
from core.suppressions import suppress_many
from tests.conftest import FakeClock
from tests.integration.test_failures_api import ScriptedSes
from tests.support.dispatching import World, plan_now, seed_sender_and_template, sent_subtasks, start_scheduler
from tests.support.planning import seed_addresses, seed_service, seed_task, seed_user

DAY = 1_796_083_200.0  # 2026-12-01 00:00 UTC, a Tuesday
ZONES = {"west": "Etc/GMT+8", "utc": "UTC", "east": "Etc/GMT-8"}  # UTC-8, UTC+0, UTC+8 (POSIX signs)
PER_ZONE = 20


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    clock.current = DAY
    start_scheduler(clock.now())
    return World(aws, clock)


def windowed_campaign(world: World, window: dict[str, object], *, no_zone: int = 0) -> str:
    now = world.clock.now()
    seed_user("alice", 10_000, ["svc"], now)
    seed_sender_and_template("alice", now)
    zoned = {f"{name}{number}@example.org": zone for name, zone in ZONES.items() for number in range(PER_ZONE)}
    unzoned = [f"nozone{number}@example.org" for number in range(no_zone)]  # the window's default applies
    seed_addresses("alice", [*zoned, *unzoned], now, timezones=zoned)
    task = seed_task("alice", now, include=["list"])
    task.update(
        actions=[
            TaskModel.send_window.set(window),
            TaskModel.window_planned.set({}),
            TaskModel.window_done.set({}),
        ]
    )
    plan_now(task.task_id, world.settings, world.clock)
    return task.task_id


def local(at: float, zone: str) -> datetime:
    return datetime.fromtimestamp(at, ZoneInfo(zone))


def run_day(world: World, clock: FakeClock, hours: float, every: float = 600.0) -> None:
    """Watchdog ticks every `every` seconds (each a 59 s invocation) for `hours` of simulated time."""
    end = clock.now() + hours * 3600
    while clock.now() < end:
        started = clock.now()
        world.tick("svc", budget=59.0)
        clock.current = max(clock.now(), started + every)


def test_every_send_falls_in_its_recipients_local_window_and_daily_quota_holds(world: World, clock: FakeClock) -> None:
    seed_service("svc", clock.now(), sending_rate=1.0, daily_quota=50)
    window = {"start": "09:00", "end": "17:00", "timezone": "UTC", "quiet_days": []}
    task_id = windowed_campaign(world, window, no_zone=5)

    planned = TaskModel.get(task_id).window_planned.as_dict()
    assert planned == {"Etc/GMT+8": PER_ZONE, "UTC": PER_ZONE + 5, "Etc/GMT-8": PER_ZONE}
    # 05:00 UTC: only UTC+8 (13:00 there) is inside its window.
    clock.current = DAY + 5 * 3600
    assert waiting_for_window(TaskModel.get(task_id), clock.now()) == 2 * PER_ZONE + 5

    clock.current = DAY
    run_day(world, clock, hours=34)  # to 10:00 UTC the next day

    sent = sent_subtasks(task_id)
    assert len(sent) == 3 * PER_ZONE + 5  # everyone: the quota ran out on day one, the rest went on day two
    for subtask in sent:
        moment = local(float(subtask.sent_at), subtask.timezone or "UTC")
        assert 9 <= moment.hour < 17, (subtask.email, moment)
    per_day = Counter(datetime.fromtimestamp(float(s.sent_at), UTC).date().isoformat() for s in sent)
    assert per_day == {"2026-12-01": 50, "2026-12-02": 15}  # the daily quota, exactly
    days = [usage for usage in ServiceUsageModel.query("svc") if len(usage.day) == 10]  # not minute counters
    assert len(days) == 2 and all(int(usage.used) <= 50 for usage in days)
    assert waiting_for_window(TaskModel.get(task_id), clock.now()) == 0


def test_quiet_days_and_a_window_across_midnight(world: World, clock: FakeClock) -> None:
    seed_service("svc", clock.now(), sending_rate=1.0, daily_quota=10_000)
    # 22:00-02:00 local, never on a Wednesday (local): UTC+8 contacts' Tuesday night is 14:00-18:00
    # UTC Tuesday; the part after their midnight is Wednesday and quiet.
    window = {"start": "22:00", "end": "02:00", "timezone": "UTC", "quiet_days": ["wed"]}
    task_id = windowed_campaign(world, window)
    run_day(world, clock, hours=30)
    for subtask in sent_subtasks(task_id):
        moment = local(float(subtask.sent_at), subtask.timezone or "UTC")
        assert moment.hour >= 22 or moment.hour < 2, moment
        assert moment.strftime("%a") != "Wed", moment
    assert len(sent_subtasks(task_id)) == 3 * PER_ZONE


def test_a_closed_window_keeps_places_and_other_zones_send(world: World, clock: FakeClock) -> None:
    seed_service("svc", clock.now(), sending_rate=0.5, daily_quota=10_000)
    window = {"start": "09:00", "end": "17:00", "timezone": "UTC", "quiet_days": []}
    task_id = windowed_campaign(world, window)
    clock.current = DAY + 10 * 3600  # 10:00 UTC: UTC is open, UTC+8 (18:00) and UTC-8 (02:00) shut
    world.tick("svc", budget=30.0)
    sent = sent_subtasks(task_id)
    assert {s.timezone for s in sent} == {"UTC"} and len(sent) == PER_ZONE
    waiting = [s for s in SubtaskModel.scan() if s.status == "queued"]
    assert len(waiting) == 2 * PER_ZONE
    assert waiting_for_window(TaskModel.get(task_id), clock.now()) == 2 * PER_ZONE


def test_waiting_for_window_follows_unsubscribes_suppressions_at_send_time_and_retried_failures(
    world: World, clock: FakeClock
) -> None:
    # Given 10:00 UTC: the UTC zone open and partly sent; UTC-8 and UTC+8 waiting
    seed_service("svc", clock.now(), sending_rate=0.5, daily_quota=10_000)
    window = {"start": "09:00", "end": "17:00", "timezone": "UTC", "quiet_days": []}
    task_id = windowed_campaign(world, window)
    ses = ScriptedSes(rejected={"utc3@example.org"})
    clock.current = DAY + 10 * 3600
    world.tick("svc", budget=4.0, ses=ses)
    assert 0 < len(sent_subtasks(task_id)) < PER_ZONE - 1  # UTC recipients still queued, their zone open
    assert waiting_for_window(TaskModel.get(task_id), clock.now()) == 2 * PER_ZONE

    # When two waiting recipients unsubscribe (the list's sweep suppresses their subtasks)
    suppress_many("alice", ["west1@example.org", "east2@example.org"], SuppressionReason.UNSUBSCRIBED, clock.now())
    # Then they no longer wait
    assert waiting_for_window(TaskModel.get(task_id), clock.now()) == 2 * PER_ZONE - 2
    world.tick("svc", budget=30.0, ses=ses)  # the rest of UTC: one rejected by SES
    assert Counter(s.status for s in SubtaskModel.scan() if s.timezone == "UTC") == {"sent": 19, "failed": 1}

    # When one more is listed without a sweep reaching it, and its window opens (02:00 UTC the next
    # day: 10:00 in UTC+8), its claim refuses it
    listed = SuppressionModel("alice", contact_id_for("east3@example.org"), email="east3@example.org")
    listed.reason, listed.created_at = "unsubscribed", clock.now()
    listed.save()
    clock.current = DAY + 86_400 + 2 * 3600
    world.tick("svc", budget=59.0)
    east = Counter(s.status for s in SubtaskModel.scan() if s.timezone == "Etc/GMT-8")
    assert east == {"sent": PER_ZONE - 2, "suppressed": 2}
    # Then at 17:00 UTC (09:00 in UTC-8: its 19 recipients may go) nothing waits for its window
    clock.current = DAY + 86_400 + 17 * 3600
    assert waiting_for_window(TaskModel.get(task_id), clock.now()) == 0

    # When the rejected UTC recipient is retried while UTC is shut, it waits for its window again
    retried = retry_failed(Caller("alice", frozenset()), task_id, RetryDeps(clock=clock))
    assert retried.requeued == 1
    assert waiting_for_window(TaskModel.get(task_id), clock.now()) == 1
