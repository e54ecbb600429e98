"""A service's daily quota, per UTC day, reserved in blocks with a conditional ADD.

`used` on the day's item only ever grows through `reserve_block`, whose condition keeps it at or
below `daily_quota`, so concurrent dispatchers can never push a service past its quota. A block is
reserved before its emails are sent; what an invocation does not send is handed back at its end
(`release`). A crash loses at most one block for that day: the service sends less, never more."""

from __future__ import annotations

from core.clock import utc_day
from core.storage.models import ServiceUsageModel, update_if

USAGE_TTL_SECONDS = 40 * 86_400


def used_today(service_id: str, now: float) -> int:
    try:
        return int(ServiceUsageModel.get(service_id, utc_day(now), consistent_read=True).used)
    except ServiceUsageModel.DoesNotExist:
        return 0


def reserve_block(service_id: str, daily_quota: int, wanted: int, now: float) -> int:
    """Reserves up to `wanted` sends of today's quota; returns how many it got (0: exhausted)."""
    day = utc_day(now)
    size = min(wanted, daily_quota)
    while size > 0:
        reserved = update_if(
            ServiceUsageModel(service_id, day),
            [ServiceUsageModel.used.add(size), ServiceUsageModel.expires_at.set(int(now) + USAGE_TTL_SECONDS)],
            ServiceUsageModel.used.does_not_exist() | (ServiceUsageModel.used <= daily_quota - size),
        )
        if reserved:
            return size
        # Less than a block is left today: ask for exactly what remains (it may shrink meanwhile).
        size = min(size - 1, daily_quota - used_today(service_id, now))
    return 0


def release(service_id: str, unused: int, reserved_at: float) -> None:
    """Hands back the unsent part of a block, to the day it was reserved on."""
    if unused > 0:
        ServiceUsageModel(service_id, utc_day(reserved_at)).update(actions=[ServiceUsageModel.used.add(-unused)])
