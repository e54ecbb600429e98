"""The SES events function's collaborators, wired to the modules that own them: the reputation
counters and guard (core.deliverability.reputation) and the suppression list (core.suppressions).

core.suppressions is built alongside this one (issue 11) and looked up by name until it is merged,
so this package type-checks and runs before; a missing module is reported loudly on each use
instead of failing every event of the batch. Once merged it becomes a plain import."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence
from types import ModuleType

from core.deliverability import reputation
from core.deliverability.event_effects import EventPorts, ReputationOutcome
from core.settings import Settings
from core.states import SuppressionReason

log = logging.getLogger(__name__)


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise  # the module is there but something it imports is not: a real error
        return None


def event_ports(settings: Settings) -> EventPorts:
    suppressions = _module("core.suppressions")
    policy = reputation.ReputationPolicy.from_settings(settings)

    def suppress(
        user_id: str, email: str, reason: SuppressionReason, now: float, *, detail: str | None = None
    ) -> object:
        if suppressions is None:
            log.error("core.suppressions is not deployed: %s not suppressed (%s)", email, reason)
            return None
        return suppressions.suppress(user_id, email, reason, now, detail=detail)

    def record(outcomes: Sequence[ReputationOutcome], now: float) -> None:
        reputation.record([reputation.Outcome(o.user_id, o.service_id, o.kind, o.at) for o in outcomes], now)

    def guard(user_ids: Iterable[str], service_ids: Iterable[str], now: float) -> object:
        return reputation.guard(user_ids, service_ids, now, policy)

    return EventPorts(suppress=suppress, record=record, guard=guard)
