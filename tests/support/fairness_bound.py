"""The weighted fairness bound of docs/fairness.md, checked over every window of a run of picks.

For user i of weight w_i among users of total weight W, a window of n consecutive picks gives it
c_i picks, and the bound is |c_i - n*w_i/W| <= w_i*(1 - w_i/W). Multiplied by W everything is an
integer: with Q(t) = W*(picks of i among the first t) - t*w_i, a window [s, e) deviates by
(Q(e) - Q(s)) / W, so every window is within the bound iff the largest rise and the largest fall of Q
are at most w_i*(W - w_i): one pass, not one per window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Deviation:
    """The extreme deviations (times W) of a user's count from its share, over the windows checked."""

    most_over: int  # max over windows of W*c_i - n*w_i
    most_under: int  # max over windows of n*w_i - W*c_i
    allowed: int  # w_i * (W - w_i): the bound, times W

    @property
    def within(self) -> bool:
        return self.most_over <= self.allowed and self.most_under <= self.allowed


def window_deviation(picks: Sequence[str], user: str, weight: int, total: int) -> Deviation:
    """Over every window [s, e) of `picks` (0 <= s < e <= len): how far `user`'s count strays from
    its share weight/total."""
    q = 0
    lowest = highest = 0  # min and max of Q over the prefixes seen so far (Q(0) = 0)
    most_over = most_under = 0
    for pick in picks:
        q += total * (pick == user) - weight
        most_over = max(most_over, q - lowest)
        most_under = max(most_under, highest - q)
        lowest, highest = min(lowest, q), max(highest, q)
    return Deviation(most_over, most_under, weight * (total - weight))


def prefix_deviation(picks: Sequence[str], user: str, weight: int, total: int) -> Deviation:
    """Over every prefix [0, e) only."""
    q = most_over = most_under = 0
    for pick in picks:
        q += total * (pick == user) - weight
        most_over, most_under = max(most_over, q), max(most_under, -q)
    return Deviation(most_over, most_under, weight * (total - weight))


def brute_force_deviation(picks: Sequence[str], user: str, weight: int, total: int) -> Deviation:
    """The same as window_deviation, window by window (to check it on short runs)."""
    most_over = most_under = 0
    for start in range(len(picks)):
        count = 0
        for end in range(start + 1, len(picks) + 1):
            count += picks[end - 1] == user
            error = total * count - (end - start) * weight
            most_over, most_under = max(most_over, error), max(most_under, -error)
    return Deviation(most_over, most_under, weight * (total - weight))
