"""The SES events function's collaborators, wired to the modules that own them: the tenant's
suppression list (core.suppressions, mirrored to SES's account-level list when the operator turned
that on), the reputation counters and guard (core.deliverability.reputation) and the provider
deferrals of a service's recipient groups (core.deliverability.deferrals)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from core import suppressions
from core.deliverability import deferrals, reputation
from core.deliverability.event_effects import EventPorts, ReputationOutcome
from core.settings import Settings
from core.states import SuppressionReason


def event_ports(settings: Settings, account_list: suppressions.AccountSuppressionList | None = None) -> EventPorts:
    policy = reputation.ReputationPolicy.from_settings(settings)
    deferral_policy = deferrals.DeferralPolicy.from_settings(settings)

    def suppress(
        user_id: str, email: str, reason: SuppressionReason, now: float, *, detail: str | None = None
    ) -> object:
        return suppressions.suppress(user_id, email, reason, now, detail=detail, account_list=account_list)

    def record(outcomes: Sequence[ReputationOutcome], now: float) -> None:
        reputation.record([reputation.Outcome(o.user_id, o.service_id, o.kind, o.at) for o in outcomes], now)

    def guard(user_ids: Iterable[str], service_ids: Iterable[str], now: float) -> object:
        return reputation.guard(user_ids, service_ids, now, policy)

    def defer(
        service_id: str,
        recipient_address: str,
        delay_type: str,
        now: float,
        *,
        reported_at: float,
        subtask_key: tuple[str, str] | None = None,
    ) -> object:
        return deferrals.record_deferral(
            service_id,
            recipient_address,
            delay_type,
            now,
            deferral_policy,
            reported_at=reported_at,
            subtask_key=subtask_key,
        )

    return EventPorts(suppress=suppress, record=record, guard=guard, defer=defer)
