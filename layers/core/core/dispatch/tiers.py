"""Two dispatcher functions by pace: a service sending at most 10 emails a second (at least
PACED_MIN_INTERVAL_SECONDS between sends) spends most of its invocation asleep between sends, and
Lambda bills that sleep by memory; it runs on a small function (the paced tier). Faster services
need the CPU of the larger one (the fast tier).

Routing is only about cost: either function dispatches any service correctly (the lease, not the
function, decides who sends), so a service whose rate changed since its schedule or wake-up was
sent is still served, and an empty paced target (a test or an older stack) means the fast one."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# 10 emails/s: at ~10 ms of CPU per email a 0.2-vCPU function is busy half the time at most.
PACED_MIN_INTERVAL_SECONDS = 0.1


class Tier(StrEnum):
    FAST = "fast"
    PACED = "paced"


def tier_of(sending_rate: float) -> Tier:
    """`sending_rate` is the service's seconds between two sends."""
    return Tier.PACED if sending_rate >= PACED_MIN_INTERVAL_SECONDS else Tier.FAST


@dataclass(frozen=True)
class TierTargets:
    """One target (a function ARN, a queue URL) per tier."""

    fast: str
    paced: str = ""

    def for_rate(self, sending_rate: float | None) -> str:
        if sending_rate is not None and self.paced and tier_of(sending_rate) is Tier.PACED:
            return self.paced
        return self.fast
