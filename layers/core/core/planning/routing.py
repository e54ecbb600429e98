"""Routing: which of a user's email services a subtask goes to.

The rule (documented in docs/planning.md): among the user's assigned services that
are enabled and healthy and still have daily quota today, each gets a share proportional to what
it can deliver in the next 24 hours, `min(remaining daily quota, 86,400 / sending_rate)`. When
none qualifies, the enabled services share equally and the work waits (failover between services
is not built yet).
Shares become a short cycle by smooth weighted round robin (the nginx algorithm), so consecutive
recipients interleave across services instead of arriving in blocks, and the service of the
recipient at plan position `seq` is `cycle[seq % len(cycle)]`: deterministic, so a resumed or
repeated planner chunk assigns exactly what the first run did."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import Conflict

CYCLE_SLOTS = 100
SECONDS_PER_DAY = 86_400


class NoServiceAvailable(Conflict):
    code = "no_service"


@dataclass(frozen=True)
class ServiceCapacity:
    service_id: str
    enabled: bool
    healthy: bool
    sending_rate: float
    remaining_today: int

    @property
    def deliverable_next_day(self) -> float:
        return min(float(self.remaining_today), SECONDS_PER_DAY / self.sending_rate)


def service_weights(services: list[ServiceCapacity]) -> dict[str, float]:
    usable = [s for s in services if s.enabled and s.healthy and s.remaining_today > 0]
    if usable:
        return {s.service_id: s.deliverable_next_day for s in usable}
    enabled = [s for s in services if s.enabled]
    if not enabled:
        raise NoServiceAvailable("no enabled email service is assigned to this user")
    return {s.service_id: 1.0 for s in enabled}


def routing_cycle(weights: dict[str, float], slots: int = CYCLE_SLOTS) -> list[str]:
    """A cycle of at most `slots` entries in which each service appears in proportion to its
    weight (at least once), interleaved by smooth weighted round robin."""
    total = sum(weights.values())
    integer_weights = {
        service_id: max(1, round(weight / total * slots)) for service_id, weight in sorted(weights.items())
    }
    length = sum(integer_weights.values())
    current = dict.fromkeys(integer_weights, 0)
    cycle = []
    for _ in range(length):
        for service_id, weight in integer_weights.items():
            current[service_id] += weight
        chosen = max(current, key=lambda service_id: (current[service_id], service_id))
        current[chosen] -= length
        cycle.append(chosen)
    return cycle


def assigned_at(cycle: list[str], seq: int) -> str:
    return cycle[seq % len(cycle)]
