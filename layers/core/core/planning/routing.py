"""Routing: which of a user's email services a subtask goes to.

The rule (documented in docs/planning.md): a user's available services are those assigned to them
that are enabled and healthy, not held by the reputation guard, and still have daily quota today
(the effective daily quota: a warm-up ramp caps it, core.dispatch.warmup);
each gets a share proportional to what it can deliver in the next 24 hours, `min(remaining daily
quota, 86,400 / sending_rate)`. When none is available, the enabled services share equally and the
task waits with the reason `waiting_reason` gives; a service that stops being available hands its
queued work to the user's other available services (core.dispatch.failover).
Shares become a short cycle by smooth weighted round robin (the nginx algorithm), so consecutive
recipients interleave across services instead of arriving in blocks, and the service of the
recipient at plan position `seq` is `cycle[seq % len(cycle)]`: deterministic, so a resumed or
repeated planner chunk assigns exactly what the first run did."""

from __future__ import annotations

from dataclasses import dataclass

from core.clock import utc_day
from core.dispatch.warmup import DayQuota, service_day_quota
from core.errors import Conflict
from core.storage.models import EmailServiceModel, ServiceUsageModel, UserModel

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
    held: bool = False  # the reputation guard holds it (sending_hold): it cannot send
    # What caps its day: the daily quota, or a warm-up ramp's allowance (its reason when used up).
    quota: DayQuota | None = None

    @property
    def deliverable_next_day(self) -> float:
        return min(float(self.remaining_today), SECONDS_PER_DAY / self.sending_rate)

    @property
    def available(self) -> bool:
        return self.enabled and self.healthy and not self.held and self.remaining_today > 0


def user_capacities(user: UserModel, now: float) -> list[ServiceCapacity]:
    """What each service assigned to the user can send today (two BatchGetItems)."""
    service_ids = list(dict.fromkeys(user.service_ids or []))
    services = list(EmailServiceModel.batch_get(service_ids)) if service_ids else []
    day = utc_day(now)
    used = {
        usage.service_id: int(usage.used)
        for usage in ServiceUsageModel.batch_get([(s.service_id, day) for s in services])
    }
    capacities = []
    for s in sorted(services, key=lambda service: service.service_id):
        quota = service_day_quota(s, now)
        capacities.append(
            ServiceCapacity(
                service_id=s.service_id,
                enabled=bool(s.enabled),
                healthy=bool(s.is_healthy),
                sending_rate=float(s.sending_rate),
                remaining_today=max(0, quota.effective - used.get(s.service_id, 0)),
                held=s.sending_hold is not None,
                quota=quota,
            )
        )
    return capacities


def waiting_reason(services: list[ServiceCapacity]) -> str | None:
    """Why work for these services cannot move now (None when one of them is available): every
    healthy one is out of daily quota (`daily_quota_exhausted:<first such service>`, or
    `warmup_allowance:<it>` when a warm-up ramp is what caps its day), or held by the
    reputation guard (`reputation_hold:<first such service>`), or none is enabled and healthy
    (`no_healthy_service`)."""
    if any(s.available for s in services):
        return None
    exhausted = [s for s in services if s.enabled and s.healthy and not s.held]
    if exhausted:
        first = exhausted[0]
        return (
            first.quota.exhausted_reason(first.service_id)
            if first.quota
            else f"daily_quota_exhausted:{first.service_id}"
        )
    held = [s.service_id for s in services if s.enabled and s.healthy]
    return f"reputation_hold:{held[0]}" if held else "no_healthy_service"


def service_weights(services: list[ServiceCapacity]) -> dict[str, float]:
    usable = [s for s in services if s.available]
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
