"""The late-start guard's rule (core.late_start), on task items as read: the reference time, the
limit and its boundary, and the tasks it never expires (begun, confirmed, not about to send)."""

from __future__ import annotations

from typing import Any

import pytest

from core.late_start import (
    EXPIRABLE,
    format_lateness,
    lateness_of,
    reference_time,
    should_expire,
)
from core.states import TaskStatus, can_move, sources_of
from core.storage.models import TaskCounts, TaskModel

DAY = 86_400.0
CREATED = 1_796_000_000.0


def _task(**fields: Any) -> TaskModel:
    counts = fields.pop("counts", {})
    values: dict[str, Any] = {
        "user_id": "alice",
        "name": "campaign",
        "sender_id": "snd_1",
        "template_ids": ["tpl_1"],
        "status": TaskStatus.QUEUED,
        "created_at": CREATED,
        "updated_at": CREATED,
        "counts": TaskCounts(total=10, queued=10, **counts),
        **fields,
    }
    return TaskModel("task_1", **values)


def test_the_reference_is_scheduled_at_else_creation() -> None:
    assert reference_time(_task()) == CREATED
    assert reference_time(_task(scheduled_at=CREATED + 3_600)) == CREATED + 3_600


def test_a_task_expires_only_strictly_past_its_limit() -> None:
    scheduled = CREATED + 3_600
    task = _task(scheduled_at=scheduled, status=TaskStatus.SCHEDULED)
    assert not should_expire(task, scheduled + DAY, DAY)  # exactly 24 h late: still sent
    assert should_expire(task, scheduled + DAY + 1, DAY)
    assert lateness_of(task, scheduled + DAY + 1, DAY).seconds == DAY + 1


def test_a_task_without_scheduled_at_is_late_from_its_creation() -> None:
    task = _task()
    assert not should_expire(task, CREATED + DAY, DAY)
    assert should_expire(task, CREATED + DAY + 60, DAY)


def test_the_tasks_own_max_lateness_replaces_the_default() -> None:
    hour = _task(max_lateness=3_600)
    assert should_expire(hour, CREATED + 3_601, DAY)
    assert not should_expire(hour, CREATED + 3_600, DAY)
    week = _task(max_lateness=7 * DAY)
    assert not should_expire(week, CREATED + 6 * DAY, DAY)
    assert should_expire(week, CREATED + 7 * DAY + 1, DAY)


def test_the_stack_default_applies_when_the_task_sets_none() -> None:
    task = _task()
    assert should_expire(task, CREATED + 7_201, 7_200)
    assert not should_expire(task, CREATED + 7_201, 2 * DAY)


def test_a_task_before_its_time_is_never_late() -> None:
    task = _task(scheduled_at=CREATED + 10 * DAY, status=TaskStatus.SCHEDULED)
    assert lateness_of(task, CREATED, DAY).seconds < 0
    assert not should_expire(task, CREATED, DAY)


@pytest.mark.parametrize("counter", ["sent", "unknown", "failed"])
def test_a_task_that_began_is_never_expired(counter: str) -> None:
    # One email sent (or maybe sent, or tried and failed) two days ago, the rest still queued.
    task = _task(status=TaskStatus.WAITING, counts={counter: 1})
    assert not should_expire(task, CREATED + 2 * DAY, DAY)


def test_a_task_whose_first_claim_was_made_is_never_expired_even_before_its_counters_move() -> None:
    # Claimed a minute before its limit, nothing recorded yet (counters flush after the sends).
    task = _task(began_at=CREATED + DAY - 60)
    assert not should_expire(task, CREATED + 2 * DAY, DAY)


def test_suppressed_or_cancelled_recipients_are_not_a_beginning() -> None:
    task = _task(counts={"suppressed": 2, "cancelled": 1})
    assert should_expire(task, CREATED + 2 * DAY, DAY)


def test_a_confirmed_task_is_never_expired_again() -> None:
    assert not should_expire(_task(late_start_confirmed=True), CREATED + 30 * DAY, DAY)
    assert should_expire(_task(late_start_confirmed=False), CREATED + 30 * DAY, DAY)


@pytest.mark.parametrize("status", sorted(set(TaskStatus) - set(EXPIRABLE)))
def test_only_a_task_about_to_send_may_expire(status: TaskStatus) -> None:
    assert not should_expire(_task(status=status), CREATED + 30 * DAY, DAY)


@pytest.mark.parametrize("status", EXPIRABLE)
def test_every_status_about_to_send_may_expire(status: TaskStatus) -> None:
    assert should_expire(_task(status=status), CREATED + 30 * DAY, DAY)


def test_the_expirable_statuses_are_the_transition_tables() -> None:
    assert sorted(EXPIRABLE) == sorted(sources_of(TaskStatus.EXPIRED))
    assert can_move(TaskStatus.EXPIRED, TaskStatus.QUEUED) and can_move(TaskStatus.EXPIRED, TaskStatus.CANCELLED)
    assert not can_move(TaskStatus.SENDING, TaskStatus.EXPIRED)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(94_380, "26h13m"), (DAY, "24h00m"), (2 * DAY + 59, "48h00m"), (3_661, "1h01m"), (59, "0h00m")],
)
def test_the_reason_shows_hours_and_minutes(seconds: float, text: str) -> None:
    assert format_lateness(seconds) == text


def test_under_a_send_window_lateness_counts_from_the_first_opening() -> None:
    friday_evening = 1_797_012_000.0  # 2026-12-11 (a Friday) 18:00 UTC
    monday_nine = friday_evening + 2 * DAY + 15 * 3600  # 2026-12-14 09:00 UTC
    window = {"start": "09:00", "end": "17:00", "timezone": "UTC", "quiet_days": ["sat", "sun"]}
    task = _task(scheduled_at=friday_evening, send_window=window, window_planned={"UTC": 10})
    assert reference_time(task) == monday_nine
    assert not should_expire(task, monday_nine + 3600, DAY)  # Monday 10:00: on time for the window
    assert should_expire(task, monday_nine + DAY + 3600, DAY)  # Tuesday 10:00: a day late
    # Recipients in an earlier zone open first: Tokyo's Monday 09:00 is Sunday 00:00 UTC.
    east = _task(scheduled_at=friday_evening, send_window=window, window_planned={"UTC": 5, "Asia/Tokyo": 5})
    assert reference_time(east) == monday_nine - 9 * 3600
