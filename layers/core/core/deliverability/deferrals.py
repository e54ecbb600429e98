"""Provider deferrals: an SES DeliveryDelay that says a mailbox provider is throttling us tightens
that recipient group's limit on the service for a while (docs/deferrals.md).

`RULES` is the rule table: DeliveryDelay `delayType` -> whether the provider is pushing back on our
sending (rate, volume or reputation) or the delay has another cause (the recipient's full mailbox,
SES's own failure, our own Bring-Your-Own-IP DNS). A type SES adds later tightens nothing until it
is given a row.

The state is one map on the service item, `domain_deferrals`: group (core.mail.providers.group_of)
-> {"level": k, "since": t, "until": t}. The dispatcher divides the group's per-minute / per-hour
limit by 2**level while until > now (core.dispatch.domain_throttles). `record_deferral`:

- no entry, or an expired one (until <= now): level 1, since = now;
- an entry whose last raise (`since`) is at least `step_seconds` old: level + 1 (at most
  `max_level`), since = now; a storm of delays from one burst raises the level once per step;
- every throttling delay: until = max(until, now + cooldown_seconds), written when that moves it
  by at least EXTEND_AT_LEAST_SECONDS (or with a raise).

Each change is one conditional UpdateItem asserting the entry it was computed from (or its
absence, or the map's), after one consistent read of the map; a writer that lost a race reads
again and recomputes, so concurrent events never raise a level twice within a step nor lose a
later `until`. Expired entries of other groups are removed in passing, and at most `MAX_GROUPS`
groups are deferred at once, so the service item (re-read by the dispatcher) stays small."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from core.mail.providers import group_of, is_provider
from core.settings import Settings
from core.storage.models import EmailServiceModel, SubtaskModel, update_if

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DelayRule:
    throttling: bool  # the provider is pushing back on our sending: tighten the group
    why: str


# SES's delay types (docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html).
RULES: dict[str, DelayRule] = {
    "SpamDetected": DelayRule(True, "the provider sees a large amount of unsolicited mail from us"),
    "IPFailure": DelayRule(True, "the provider blocks or throttles the sending IP"),
    "TransientCommunicationFailure": DelayRule(True, "the provider's servers refused or dropped the SMTP conversation"),
    "RecipientServerError": DelayRule(True, "the provider's servers answer with a temporary error"),
    "General": DelayRule(True, "a temporary SMTP failure (providers throttle with 421 / 4.7.x replies)"),
    "SendingDeferral": DelayRule(True, "SES deferred the message itself to protect delivery to the provider"),
    "Undetermined": DelayRule(True, "no reason given: treated as pushback, the cautious reading"),
    "MailboxFull": DelayRule(False, "the recipient's own mailbox, not the provider's limit"),
    "InternalFailure": DelayRule(False, "an SES-internal issue, not the provider"),
    "BYOIPHostNameLookupUnavailable": DelayRule(False, "our own Bring-Your-Own-IP DNS, not the provider"),
}
_UNKNOWN = DelayRule(False, "a delay type without a rule")

# A later delay moves `until` only when it adds at least this much: a burst of delays writes the
# item about once a minute, not once per email.
EXTEND_AT_LEAST_SECONDS = 60.0
MAX_GROUPS = 100  # groups deferred at once on one service (one entry ~ 60 bytes of the item)
_PRUNE_PER_WRITE = 20  # expired entries of other groups removed by one write
_ATTEMPTS = 20  # reads and writes of one event racing others on the same item


def rule_of(delay_type: str) -> DelayRule:
    return RULES.get(delay_type, _UNKNOWN)


def is_throttling(delay_type: str) -> bool:
    return rule_of(delay_type).throttling


@dataclass(frozen=True)
class DeferralPolicy:
    cooldown_seconds: float = 1800.0  # a group stays tightened this long after its last delay
    step_seconds: float = 300.0  # at least this long between two raises of its level
    max_level: int = 4  # the limit is divided by at most 2**max_level

    @classmethod
    def from_settings(cls, settings: Settings) -> DeferralPolicy:
        return cls(
            cooldown_seconds=float(settings.deferral_cooldown_seconds),
            step_seconds=float(settings.deferral_step_seconds),
            max_level=settings.deferral_max_level,
        )


@dataclass(frozen=True)
class Deferral:
    """One group's entry in `domain_deferrals`."""

    level: int
    since: float  # when the level was last raised (or started)
    until: float  # the group is tightened while until > now

    @classmethod
    def from_item(cls, entry: Any) -> Deferral:
        return cls(level=int(entry["level"]), since=float(entry["since"]), until=float(entry["until"]))

    def as_item(self) -> dict[str, Any]:
        return {"level": self.level, "since": self.since, "until": self.until}

    def active(self, now: float) -> bool:
        return self.until > now


def next_deferral(current: Deferral | None, now: float, policy: DeferralPolicy) -> Deferral:
    """The entry after one more throttling delay at `now` (equal to `current` when it changes nothing)."""
    until = now + policy.cooldown_seconds
    if current is None or not current.active(now):
        return Deferral(level=1, since=now, until=until)
    if now - current.since >= policy.step_seconds and current.level < policy.max_level:
        return Deferral(level=current.level + 1, since=now, until=max(current.until, until))
    if until - current.until < EXTEND_AT_LEAST_SECONDS:  # a burst's delays extend it once a minute
        return current
    return Deferral(level=current.level, since=current.since, until=until)


def active_levels(deferrals: dict[str, Any] | None, now: float) -> dict[str, int]:
    """group -> level of the service's entries still in force at `now` (what the dispatcher divides by)."""
    levels = {}
    for group, entry in (deferrals or {}).items():
        deferral = Deferral.from_item(entry)
        if deferral.active(now):
            levels[group] = deferral.level
    return levels


class Change(StrEnum):
    STARTED = "started"  # the group was not tightened: level 1
    RAISED = "raised"  # one level more
    EXTENDED = "extended"  # same level, later until
    UNCHANGED = "unchanged"  # within the step and until already as late (or later)
    NOT_THROTTLING = "not_throttling"  # the delay type is not the provider pushing back
    STALE = "stale"  # reported so late that its cooldown is already over
    FULL = "full"  # MAX_GROUPS other groups are tightened already
    NO_SERVICE = "no_service"  # the service item is gone


@dataclass(frozen=True)
class Recorded:
    change: Change
    group: str
    deferral: Deferral | None = None  # the group's entry after the change


def record_deferral(
    service_id: str,
    recipient_address: str,
    delay_type: str,
    now: float,
    policy: DeferralPolicy,
    *,
    reported_at: float | None = None,
    subtask_key: tuple[str, str] | None = None,
) -> Recorded:
    """Tightens the recipient's group on the service for a throttling DeliveryDelay (see the module
    docstring); `reported_at` is when SES saw the delay (an event older than the cooldown does
    nothing). `subtask_key`: the email's subtask, whose planned `group` (a provider found by MX,
    core.mail.mx_groups) is the recipient's group when its domain is not a provider's own. Raises only
    what DynamoDB raises, or RuntimeError after `_ATTEMPTS` lost races."""
    group = group_of(recipient_address)
    if not is_throttling(delay_type):
        return Recorded(Change.NOT_THROTTLING, group)
    if reported_at is not None and reported_at + policy.cooldown_seconds <= now:
        return Recorded(Change.STALE, group)
    if subtask_key is not None and not is_provider(group):
        group = _planned_group(subtask_key) or group
    for _ in range(_ATTEMPTS):
        try:
            service = EmailServiceModel.get(
                service_id, consistent_read=True, attributes_to_get=["service_id", "domain_deferrals"]
            )
        except EmailServiceModel.DoesNotExist:
            return Recorded(Change.NO_SERVICE, group)
        stored = _as_dict(service.domain_deferrals)
        entries = {name: Deferral.from_item(entry) for name, entry in (stored or {}).items()}
        current = entries.get(group)
        wanted = next_deferral(current, now, policy)
        if wanted == current:
            return Recorded(Change.UNCHANGED, group, current)
        others_active = sum(1 for name, entry in entries.items() if name != group and entry.active(now))
        if (current is None or not current.active(now)) and others_active >= MAX_GROUPS:
            log.warning("provider deferral of %s on %s not recorded: %d groups deferred", group, service_id, MAX_GROUPS)
            return Recorded(Change.FULL, group)
        if _write(service_id, group, stored is not None, entries, current, wanted, now):
            change = _change(current, wanted, now)
            if change is not Change.EXTENDED:  # what an operator looks for: a group slowed down more
                log.warning(
                    "provider deferral: %s %s to level %d on %s (%s)",
                    group,
                    change,
                    wanted.level,
                    service_id,
                    delay_type,
                )
            return Recorded(change, group, wanted)
    raise RuntimeError(f"deferral of {group} on {service_id}: lost {_ATTEMPTS} races in a row")


def _change(current: Deferral | None, wanted: Deferral, now: float) -> Change:
    if current is None or not current.active(now):
        return Change.STARTED
    return Change.RAISED if wanted.level > current.level else Change.EXTENDED


def _write(
    service_id: str,
    group: str,
    map_exists: bool,
    entries: dict[str, Deferral],
    current: Deferral | None,
    wanted: Deferral,
    now: float,
) -> bool:
    """One conditional UpdateItem from the state just read; False when another writer changed it."""
    deferrals = EmailServiceModel.domain_deferrals
    item = EmailServiceModel(service_id)
    if not map_exists:  # an item written before deferrals existed: the map is created with the entry
        return update_if(
            item,
            [deferrals.set({group: wanted.as_item()})],
            EmailServiceModel.service_id.exists() & deferrals.does_not_exist(),
        )
    entry = deferrals[group]
    condition: Condition
    if current is None:
        condition = deferrals.exists() & entry.does_not_exist()
    else:
        condition = (
            (entry["level"] == current.level) & (entry["since"] == current.since) & (entry["until"] == current.until)
        )
    actions: list[Action] = [entry.set(wanted.as_item())]
    expired = sorted(name for name, other in entries.items() if name != group and not other.active(now))
    for name in expired[:_PRUNE_PER_WRITE]:
        # Removed only while still expired: a group restarted meanwhile makes this write try again.
        actions.append(deferrals[name].remove())
        condition &= deferrals[name]["until"] <= now
    return update_if(item, actions, condition)


def _as_dict(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    return dict(value.as_dict()) if hasattr(value, "as_dict") else dict(value)


def _planned_group(subtask_key: tuple[str, str]) -> str | None:
    """The provider group the planner found by MX for the subtask's recipient (one GetItem of one
    attribute, only for a throttling delay to a domain that is not a provider's own)."""
    try:
        subtask = SubtaskModel.get(*subtask_key, attributes_to_get=["partition", "contact_id", "group"])
    except SubtaskModel.DoesNotExist:
        return None
    return subtask.group
