"""Recipient-domain throttles of one service: at most N sends per minute / per hour to a mailbox
provider (or a domain), provider deferrals tightening that for a while, and interleaving.

A limit of `per_minute` and `per_hour` is kept as a *spacing*: two sends to the group are at least
`max(60 / per_minute, 3600 / per_hour)` seconds apart. Sends spaced by s >= 60/N can number at most
N in any 60-second window (N + 1 of them would span N * s >= 60 seconds), and likewise per hour, so
a limit holds in every window, calendar minute or not, and no provider ever gets a burst. While SES
reports deferrals for the group (`domain_deferrals`, core.deliverability.deferrals), the spacing is
multiplied by 2**level; a group without a limit of its own is then spaced from
`deferral_default_per_minute`.

The spacing is kept between the moments sends start, counted from the last send to the group:
- at the pick, against the planned moment of each pick (the dispatcher plans a claim's sends one
  interval apart and never sends earlier than planned), so a group at its limit is skipped in the
  pick without losing its place;
- at the send, against the actual moments (`send_gate`), which covers a send late for its plan;
- across invocations through the lease item (`domain_sent`, saved at release); a holder taking over
  from a dead one (its in-flight journal not empty) treats every limited group as just sent to.

Interleaving (the default): a pick prefers a recipient of another group than the previous pick's,
when one is ready (core.dispatch.candidates)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NEVER = float("-inf")


@dataclass(frozen=True)
class ThrottlePolicy:
    default_per_minute: int = 60


def spacing_of(limit: Mapping[str, Any] | None, level: int, policy: ThrottlePolicy) -> float:
    """Seconds between two sends to a group with `limit` ({per_minute, per_hour}) at deferral `level`."""
    spacing = 0.0
    if limit:
        if limit.get("per_minute"):
            spacing = max(spacing, 60.0 / float(limit["per_minute"]))
        if limit.get("per_hour"):
            spacing = max(spacing, 3600.0 / float(limit["per_hour"]))
    if level > 0:
        spacing = (spacing or 60.0 / policy.default_per_minute) * 2**level
    return spacing


@dataclass
class DomainThrottles:
    interleave: bool = True
    spacing: dict[str, float] = field(default_factory=dict)  # group -> seconds between sends (limited only)
    last_sent: dict[str, float] = field(default_factory=dict)  # group -> start of its last send
    planned: dict[str, float] = field(default_factory=dict)  # group -> latest planned send of a pick
    last_group: str | None = None  # the group of the last pick (interleaving)
    crashed_at: float | None = None  # taken over from a dead holder at this time (applied at configure)

    def configure(
        self,
        limits: Mapping[str, Any] | None,
        deferrals: Mapping[str, Any] | None,
        interleave: bool,
        now: float,
        policy: ThrottlePolicy,
    ) -> None:
        """The service's limits and live deferrals (at every reload of the service)."""
        self.interleave = interleave
        levels = {
            group: int(entry.get("level", 0))
            for group, entry in (deferrals or {}).items()
            if float(entry.get("until", 0)) > now
        }
        groups = set(limits or {}) | set(levels)
        spacing = {group: spacing_of((limits or {}).get(group), levels.get(group, 0), policy) for group in groups}
        self.spacing = {group: seconds for group, seconds in spacing.items() if seconds > 0}
        if self.crashed_at is not None:  # the dead holder may have sent to any limited group up to then
            for group in self.spacing:
                self.last_sent[group] = max(self.last_sent.get(group, NEVER), self.crashed_at)
            self.crashed_at = None

    @property
    def active(self) -> bool:
        """Whether picks depend on groups at all (limits, deferrals or interleaving)."""
        return bool(self.spacing) or self.interleave

    def earliest(self, group: str) -> float:
        """When a send to `group` may next start, counting picks not sent yet."""
        spacing = self.spacing.get(group)
        if spacing is None:
            return NEVER
        last = max(self.last_sent.get(group, NEVER), self.planned.get(group, NEVER))
        return last + spacing

    def send_gate(self, group: str) -> float:
        """When a send to `group` may start, counting only sends made (the pick counted its own plan)."""
        spacing = self.spacing.get(group)
        return NEVER if spacing is None else self.last_sent.get(group, NEVER) + spacing

    def picked(self, group: str, at: float) -> None:
        if group in self.spacing:
            self.planned[group] = max(self.planned.get(group, NEVER), at)
        self.last_group = group

    def sent(self, group: str, at: float) -> None:
        if group in self.spacing:
            self.last_sent[group] = max(self.last_sent.get(group, NEVER), at)

    def snapshot(self) -> tuple[dict[str, float], str | None]:
        return dict(self.planned), self.last_group

    def restore(self, snapshot: tuple[dict[str, float], str | None]) -> None:
        """Picks that were not claimed after all (a control change): their plans are forgotten."""
        self.planned, self.last_group = dict(snapshot[0]), snapshot[1]

    # ---------------------------------------------------------------- across invocations

    def load(self, saved: Mapping[str, Any] | None, now: float, *, after_crash: bool) -> None:
        """What the previous holder left; after a crash it may have sent later than it saved, so every
        limited group counts as sent to `now` (once the limits are known: `configure`)."""
        self.last_sent = {group: float(at) for group, at in (saved or {}).items()}
        self.crashed_at = now if after_crash else None

    def saved(self, now: float) -> dict[str, float]:
        """Last sends still within their group's spacing of `now` (what the next holder must respect)."""
        return {
            group: at
            for group, at in sorted(self.last_sent.items())
            if group in self.spacing and at + self.spacing[group] > now
        }
