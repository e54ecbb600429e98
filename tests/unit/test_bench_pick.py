"""bench/pick.py's pieces (no server, nothing timed): the in-memory queue index's pages, the zones
chosen for the window, the targets, and the pick loop on in-memory items keeping the limits."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from bench.pick import (
    OPEN_HOURS,
    WINDOW,
    MemoryQueue,
    PickSetup,
    pick_ratio_met,
    pick_round,
    recipient_domain,
    requests_ratio_met,
    user_weights,
    zone_at_local_hour,
    zones_now,
)
from core.dispatch.send_windows import SendWindow
from core.mail.providers import group_of
from core.storage.models import SubtaskModel


def queued(contact_id: str) -> SubtaskModel:
    return SubtaskModel("task#00", contact_id, task_id="task", user_id="u", email="a@example.org")


def test_the_memory_queue_pages_in_contact_order_from_the_last_key_and_forgets_removed_items() -> None:
    queue = MemoryQueue()
    items = {number: queued(f"ct_{number:02d}") for number in range(7)}
    for number in (5, 1, 6, 0, 3, 2, 4):
        queue.add("svc#task", items[number])
    first = queue.query("svc#task", limit=3)
    assert [s.contact_id for s in first] == ["ct_00", "ct_01", "ct_02"]
    assert first.last_evaluated_key is not None and first.last_evaluated_key["contact_id"] == {"S": "ct_02"}
    queue.remove("svc#task", items[3])
    second = queue.query("svc#task", limit=3, last_evaluated_key=first.last_evaluated_key)
    assert [s.contact_id for s in second] == ["ct_04", "ct_05", "ct_06"]
    assert second.last_evaluated_key is None  # the end of the queue
    assert (queue.pages, queue.items_read) == (2, 6)
    assert list(queue.query("svc#other", limit=3)) == []


@pytest.mark.parametrize("utc_hour", range(24))
def test_zones_now_put_four_zones_inside_the_window_and_one_outside(utc_hour: int) -> None:
    now = datetime(2026, 12, 1, utc_hour, 59, tzinfo=UTC).timestamp()
    window = SendWindow.from_item(dict(WINDOW))
    assert window is not None
    open_zones, shut = zones_now(now)
    assert len(set(open_zones)) == len(OPEN_HOURS)
    # Inside for the next hour at least (a run is minutes); the shut zone stays shut as long.
    for at in (now, now + 3599):
        assert all(window.is_open(zone, at) for zone in open_zones)
        assert not window.is_open(shut, at)


def test_a_zone_at_a_local_hour() -> None:
    assert zone_at_local_hour(15, 15) == "Etc/GMT"
    assert zone_at_local_hour(15, 18) == "Etc/GMT-3"  # IANA's Etc signs are inverted: UTC+3
    assert zone_at_local_hour(15, 3) == "Etc/GMT+12"  # UTC-12: three in the morning
    assert zone_at_local_hour(2, 13) == "Etc/GMT-11"


def test_half_the_recipients_are_on_gmail() -> None:
    rng = random.Random(1)
    groups = [group_of(f"a@{recipient_domain(rng)}") for _ in range(4000)]
    assert 0.47 < groups.count("gmail") / len(groups) < 0.53
    assert len(set(groups)) > 6


def test_weights_and_targets() -> None:
    assert user_weights(["a", "b", "c"]) == {"a": 3, "b": 1, "c": 1}
    assert requests_ratio_met(0.4, 0.5) and not requests_ratio_met(0.4, 0.51)
    assert pick_ratio_met(0.2) and not pick_ratio_met(0.199)


def test_the_pick_loop_keeps_the_gmail_limit_the_windows_and_the_weights() -> None:
    setup = PickSetup(users=3, tasks_per_user=2, per_task=300, picks=900, rounds=1)
    on = pick_round(setup, on=True)
    assert on["picks"] == 900 and on["outside_window"] == 0
    assert on["gmail_most_in_any_60_s"] <= 60  # 60 a minute, planned at 10/s
    counts = on["picks_by_user"]
    assert counts["user00"] > counts["user01"] and counts["user00"] > counts["user02"]  # weight 3
    off = pick_round(setup, on=False)
    assert off["picks"] == 900 and off["gmail_share"] > 0.4  # no limit: gmail as queued
    assert off["queue_items_read_per_pick"] == pytest.approx(1.0, abs=0.1)  # nothing held back: read once
