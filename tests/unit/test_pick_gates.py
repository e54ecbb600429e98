"""The pieces of the pick that hold a subtask back: mailbox provider groups, domain spacing and
deferrals, send windows, and the candidate buckets (no AWS)."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from core.dispatch.candidates import BUCKET_CAP, Candidates
from core.dispatch.domain_throttles import NEVER, DomainThrottles, ThrottlePolicy, spacing_of
from core.dispatch.send_windows import SendWindow
from core.mail.providers import group_of
from core.storage.models import SubtaskModel

TUESDAY = datetime(2026, 12, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("a@gmail.com", "gmail"),
        ("a@GoogleMail.com", "gmail"),
        ("a@aol.com", "yahoo"),
        ("a@yahoo.co.uk", "yahoo"),
        ("a@hotmail.fr", "microsoft"),
        ("a@outlook.com", "microsoft"),
        ("a@icloud.com", "apple"),
        ("a@example.org", "example.org"),
        ("a@live.example.org", "live.example.org"),  # a family label, but not a country suffix
        ("a@yahoo.example.co.uk", "yahoo.example.co.uk"),
    ],
)
def test_recipient_groups(address: str, group: str) -> None:
    assert group_of(address) == group


def test_spacing_is_the_stricter_limit_and_a_deferral_doubles_it_per_level() -> None:
    policy = ThrottlePolicy(default_per_minute=30)
    assert spacing_of({"per_minute": 60}, 0, policy) == 1.0
    assert spacing_of({"per_minute": 600, "per_hour": 1800}, 0, policy) == 2.0
    assert spacing_of({"per_minute": 60}, 2, policy) == 4.0
    assert spacing_of(None, 1, policy) == 4.0  # no limit of its own: from the default per minute
    assert spacing_of(None, 0, policy) == 0.0


def test_sends_spaced_by_the_limit_never_exceed_it_in_any_window() -> None:
    throttles = DomainThrottles()
    throttles.configure({"gmail": {"per_minute": 7}}, None, True, 0.0, ThrottlePolicy())
    sends: list[float] = []
    at = 0.0
    rng = random.Random(7)
    while at < 600:
        at += rng.choice([0.1, 0.5, 1.3, 3.0])
        if throttles.earliest("gmail") <= at:
            throttles.picked("gmail", at)
            throttles.sent("gmail", at)
            sends.append(at)
    for start in sends:
        assert sum(1 for t in sends if start <= t < start + 60) <= 7
    assert len(sends) >= 7 * 9  # and it is not slower than the limit needs


def test_deferrals_apply_until_they_end() -> None:
    throttles = DomainThrottles()
    deferrals = {"yahoo": {"level": 2, "since": 0, "until": 100}, "gmail": {"level": 3, "since": 0, "until": 5}}
    throttles.configure({"yahoo": {"per_minute": 60}}, deferrals, True, 10.0, ThrottlePolicy())
    assert throttles.spacing == {"yahoo": 4.0}  # gmail's deferral ended at 5


def test_saved_spacing_carries_over_and_a_crash_counts_as_a_send_now() -> None:
    policy = ThrottlePolicy()
    first = DomainThrottles()
    first.configure({"gmail": {"per_minute": 6}}, None, True, 0.0, policy)
    first.picked("gmail", 100.0)
    first.sent("gmail", 100.0)
    assert first.saved(105.0) == {"gmail": 100.0}
    assert first.saved(111.0) == {}  # its spacing (10 s) is over: nothing to keep

    clean = DomainThrottles()
    clean.load(first.saved(105.0), 105.0, after_crash=False)
    clean.configure({"gmail": {"per_minute": 6}}, None, True, 105.0, policy)
    assert clean.earliest("gmail") == 110.0

    crashed = DomainThrottles()
    crashed.load({"gmail": 50.0}, 105.0, after_crash=True)
    crashed.configure({"gmail": {"per_minute": 6}}, None, True, 105.0, policy)
    assert crashed.earliest("gmail") == 115.0
    assert crashed.earliest("example.org") == NEVER


def test_a_snapshot_forgets_picks_that_were_not_claimed() -> None:
    throttles = DomainThrottles()
    throttles.configure({"gmail": {"per_minute": 60}}, None, True, 0.0, ThrottlePolicy())
    snapshot = throttles.snapshot()
    throttles.picked("gmail", 3.0)
    assert throttles.earliest("gmail") == 4.0
    throttles.restore(snapshot)
    assert throttles.earliest("gmail") == NEVER


def local_moment(zone: str, text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_a_window_in_each_recipients_zone_with_quiet_days() -> None:
    window = SendWindow.from_item({"start": "09:00", "end": "17:00", "timezone": "UTC", "quiet_days": ["sat", "sun"]})
    assert window is not None
    assert window.is_open("Asia/Tokyo", local_moment("Asia/Tokyo", "2026-12-01T09:00"))
    assert not window.is_open("Asia/Tokyo", local_moment("Asia/Tokyo", "2026-12-01T08:59"))
    assert not window.is_open("Asia/Tokyo", local_moment("Asia/Tokyo", "2026-12-01T17:00"))
    assert not window.is_open("Asia/Tokyo", local_moment("Asia/Tokyo", "2026-12-05T10:00"))  # a Saturday
    assert window.is_open(None, local_moment("UTC", "2026-12-01T12:00"))  # the default zone
    assert window.is_open("Not/AZone", local_moment("UTC", "2026-12-01T12:00"))  # unknown: the default


def test_a_window_across_midnight_and_its_next_opening() -> None:
    window = SendWindow.from_item({"start": "22:00", "end": "02:00", "timezone": "UTC", "quiet_days": ["wed"]})
    assert window is not None
    zone = "America/New_York"
    assert window.is_open(zone, local_moment(zone, "2026-12-01T23:30"))  # Tuesday night
    assert not window.is_open(zone, local_moment(zone, "2026-12-02T01:00"))  # Wednesday: quiet
    assert window.is_open(zone, local_moment(zone, "2026-12-03T01:00"))  # Thursday early morning
    # From Tuesday noon the next opening is Tuesday 22:00; from Wednesday 01:00 it is Thursday 00:00.
    assert window.next_open(zone, local_moment(zone, "2026-12-01T12:00")) == local_moment(zone, "2026-12-01T22:00")
    assert window.next_open(zone, local_moment(zone, "2026-12-02T01:00")) == local_moment(zone, "2026-12-03T00:00")


def test_next_opening_agrees_with_a_minute_by_minute_search() -> None:
    window = SendWindow.from_item({"start": "08:30", "end": "11:15", "timezone": "UTC", "quiet_days": ["mon", "thu"]})
    assert window is not None
    for zone in ["Pacific/Chatham", "Asia/Kolkata", "America/Los_Angeles", "UTC"]:
        at = TUESDAY + 1234.0
        for _ in range(5):
            expected = next(
                t for t in itertools.count(int(at // 60) * 60, 60) if t >= at and window.is_open(zone, float(t))
            )
            opening = window.next_open(zone, at)
            assert opening == max(float(expected), at), zone
            at = opening + 3 * 3600 + 17


def subtask(contact_id: str, email: str) -> SubtaskModel:
    return SubtaskModel("task#00", contact_id, email=email, task_id="task", user_id="u")


def test_the_pick_keeps_queue_order_among_allowed_buckets_and_interleaves() -> None:
    candidates = Candidates()
    for number, email in enumerate(["a@g", "b@g", "c@y", "d@g", "e@m"]):
        candidates.add(subtask(f"ct_{number}", email), (email[-1], ""))
    picked = []
    last = None
    while candidates:
        key = candidates.choose(lambda key: True, last)
        assert key is not None
        last = key[0]
        picked.append(candidates.pop(key).contact_id)
    assert picked == ["ct_0", "ct_2", "ct_1", "ct_4", "ct_3"]  # g y g m g: never twice when avoidable

    candidates = Candidates()
    for number, email in enumerate(["a@g", "b@y", "c@g"]):
        candidates.add(subtask(f"ct_{number}", email), (email[-1], ""))
    held = candidates.choose(lambda key: key[0] != "g", None)  # g held back: y goes, g keeps its place
    assert held == ("y", "")
    candidates.pop(held)
    assert candidates.choose(lambda key: True, None) == ("g", "")
    assert candidates.pop(("g", "")).contact_id == "ct_0"


def test_a_full_bucket_remembers_where_to_read_on() -> None:
    candidates = Candidates()
    items = [subtask(f"ct_{number:04d}", "x@g") for number in range(BUCKET_CAP + 5)]
    kept = [candidates.add(item, ("g", "")) for item in items]
    assert kept == [True] * BUCKET_CAP + [False] * 5
    assert len(candidates) == BUCKET_CAP and candidates.has_overflow()
    while candidates:
        candidates.pop(("g", ""))
    (drained,) = list(candidates.drained_overflows(lambda key: True))
    assert drained == (("g", ""), items[BUCKET_CAP - 1])  # read on after the last one kept
    candidates.begin_refill(("g", ""))
    assert candidates.add(items[BUCKET_CAP], ("g", ""))
    candidates.end_refill(("g", ""))
    assert not candidates.has_overflow()
