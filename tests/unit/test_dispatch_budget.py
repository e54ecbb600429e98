"""The send budget (core.dispatch.budget) without AWS: pace across invocations and after throttling,
quota units reserved in blocks, given back, handed back to the day they were reserved on."""

from __future__ import annotations

from core.dispatch.budget import THROTTLE_BACKOFF_SECONDS, SendBudget
from tests.conftest import FakeClock

MIDNIGHT = 1_796_083_200.0  # 2026-12-01T00:00:00Z


class Quota:
    """A day's quota as service_quota keeps it: reservations and hand-backs by day."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.reserved: list[tuple[int, float]] = []
        self.released: list[tuple[int, float]] = []

    def reserve(self, wanted: int, now: float) -> int:
        got = min(wanted, self.left)
        self.left -= got
        if got:
            self.reserved.append((got, now))
        return got

    def release(self, units: int, reserved_at: float) -> None:
        if units:
            self.released.append((units, reserved_at))


def test_the_pace_counts_from_the_last_send_even_a_predecessors() -> None:
    clock = FakeClock(current=100.0)
    budget = SendBudget(clock, 2.0, last_send_at=99.5, reserve=Quota(10).reserve, release=Quota(0).release)
    assert budget.wait(deadline=200.0) and clock.now() == 101.5  # 2 s after the predecessor's last send
    budget.sent(clock.now())
    assert budget.wait(deadline=200.0) and clock.now() == 103.5
    budget.sent(clock.now())
    assert not budget.wait(deadline=105.0)  # the next slot is past the deadline: no sleep
    assert clock.now() == 103.5


def test_after_throttling_the_next_send_waits_the_backoff() -> None:
    clock = FakeClock(current=100.0)
    budget = SendBudget(clock, 0.1, last_send_at=None, reserve=Quota(10).reserve, release=Quota(0).release)
    budget.sent(100.0)
    budget.throttled(100.05)
    assert budget.wait(deadline=200.0) and clock.now() == 100.05 + THROTTLE_BACKOFF_SECONDS


def test_units_come_in_blocks_go_back_unused_and_stop_when_the_day_is_spent() -> None:
    clock = FakeClock(current=MIDNIGHT + 10)
    quota = Quota(7)
    budget = SendBudget(clock, 1.0, None, reserve=quota.reserve, release=quota.release)
    assert all(budget.take(clock.now(), wanted=5) for _ in range(5))
    assert quota.reserved == [(5, MIDNIGHT + 10)]
    budget.give_back(2)  # two of them were not sent
    assert budget.take(clock.now(), 5) and budget.take(clock.now(), 5)
    assert budget.take(clock.now(), 5) and budget.take(clock.now(), 5)  # a second block: the 2 left today
    assert not budget.take(clock.now(), 5)
    budget.close()
    assert quota.reserved == [(5, MIDNIGHT + 10), (2, MIDNIGHT + 10)] and quota.released == []


def test_what_is_left_goes_back_to_the_day_it_was_reserved_on() -> None:
    clock = FakeClock(current=MIDNIGHT - 1)
    quota = Quota(100)
    budget = SendBudget(clock, 1.0, None, reserve=quota.reserve, release=quota.release)
    assert budget.take(clock.now(), wanted=10)
    clock.advance(5)  # past midnight: the block's 9 units belong to yesterday
    budget.close()
    assert quota.released == [(9, MIDNIGHT - 1)]


def test_a_quota_error_from_ses_keeps_the_block_spent() -> None:
    quota = Quota(100)
    budget = SendBudget(FakeClock(), 1.0, None, reserve=quota.reserve, release=quota.release)
    assert budget.take(0.0, wanted=10)
    budget.quota_spent()
    budget.close()
    assert quota.released == []


def test_sends_before_follows_the_pace_achieved_when_slower() -> None:
    clock = FakeClock(current=0.0)
    budget = SendBudget(clock, 0.01, None, reserve=Quota(0).reserve, release=Quota(0).release)
    assert budget.sends_before(deadline=1.0, now=0.0) == 100
    for at in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1):
        budget.sent(at)
    assert budget.sends_before(deadline=2.1, now=1.1) < 20  # ~0.1 s a send achieved, not 0.01
