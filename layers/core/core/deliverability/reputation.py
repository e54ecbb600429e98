"""The reputation guard: rolling bounce and complaint rates per tenant and per service, and the hold
written when one crosses its threshold (core.deliverability.holds; docs/reputation.md).

Counters: the SES events function calls `record` with what SES reported (Send, Delivery, Bounce,
Complaint; already de-duplicated), and each (scope, hour) bucket of ReputationTable gets one
UpdateItem of ADDs for the whole batch. Scopes are `user#<id>` and `service#<id>`; buckets are the
UTC hour of the event (`YYYY-MM-DDTHH`), kept a week (TTL).

Window: the last `window_hours` hour buckets (the current one included), or with `window_sends` the
most recent of them that hold that many sends. Rates are bounced / sent and complained / sent over
the window, compared exactly (Decimal), and only once the window holds `min_sends` sends.

Restart: an admin's resume must not be undone at once by the very bounces that caused the hold. It
copies each bucket's counters into its `base_*` attributes (the rates count `x - base_x`) and then
bumps the scope's `~resets` item. The guard reads that item in the same Query as the buckets and
writes a hold only while it is unchanged, so a guard that read the counters before a resume cannot
hold the scope again with them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from core.deliverability.holds import RESETS_BUCKET, hold_service, hold_user, service_scope, user_scope
from core.settings import Settings
from core.storage.models import ReputationModel, update_if

SECONDS_PER_HOUR = 3_600
RETENTION_SECONDS = 8 * 86_400  # TTL of a bucket: longer than the longest window (168 h)


class Kind(StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


_COUNTER = {
    Kind.SENT: ReputationModel.sent,
    Kind.DELIVERED: ReputationModel.delivered,
    Kind.BOUNCED: ReputationModel.bounced,
    Kind.COMPLAINED: ReputationModel.complained,
}


@dataclass(frozen=True)
class Outcome:
    """One SES report about one email, already de-duplicated by the caller."""

    user_id: str
    service_id: str
    kind: str  # "sent" | "delivered" | "bounced" | "complained"
    at: float  # epoch seconds of the event


def bucket_of(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H")


def _hour_start(at: float) -> float:
    return float(int(at // SECONDS_PER_HOUR) * SECONDS_PER_HOUR)


def record(outcomes: Sequence[Outcome], now: float) -> None:
    """Adds the outcomes to their tenant's and service's hour buckets: one UpdateItem of ADDs per
    (scope, hour) the batch touches, however many outcomes. An unknown kind is a caller's bug."""
    totals: dict[tuple[str, str], Counter[Kind]] = {}
    expiry: dict[str, float] = {}
    for outcome in outcomes:
        kind = Kind(outcome.kind)
        bucket = bucket_of(outcome.at)
        expiry[bucket] = max(_hour_start(outcome.at), _hour_start(now)) + RETENTION_SECONDS
        for scope in (user_scope(outcome.user_id), service_scope(outcome.service_id)):
            totals.setdefault((scope, bucket), Counter())[kind] += 1
    for (scope, bucket), counts in sorted(totals.items()):
        ReputationModel(scope, bucket).update(
            actions=[
                *(_COUNTER[kind].add(n) for kind, n in sorted(counts.items())),
                ReputationModel.expires_at.set(expiry[bucket]),
            ]
        )


# ---------------------------------------------------------------- the window and the policy


@dataclass(frozen=True)
class Window:
    """What a scope's counters say over the policy's window (since the last resume)."""

    sent: int = 0
    bounced: int = 0
    complained: int = 0
    resets: int = 0  # the scope's resumes when read: a hold is written only while unchanged


@dataclass(frozen=True)
class ReputationPolicy:
    bounce_rate: float = 0.04
    complaint_rate: float = 0.0008
    min_sends: int = 200
    window_hours: int = 24
    window_sends: int = 0  # > 0: the most recent hours holding this many sends

    @classmethod
    def from_settings(cls, settings: Settings) -> ReputationPolicy:
        return cls(
            bounce_rate=settings.reputation_bounce_rate,
            complaint_rate=settings.reputation_complaint_rate,
            min_sends=settings.reputation_min_sends,
            window_hours=settings.reputation_window_hours,
            window_sends=settings.reputation_window_sends,
        )

    def first_bucket(self, now: float) -> str:
        return bucket_of(_hour_start(now) - (self.window_hours - 1) * SECONDS_PER_HOUR)

    def breach(self, window: Window) -> str | None:
        """The hold's reason when the window crosses a threshold (at or over it), else None."""
        if window.sent < self.min_sends:
            return None
        checks = (
            ("bounce_rate", window.bounced, self.bounce_rate),
            ("complaint_rate", window.complained, self.complaint_rate),
        )
        for name, count, threshold in checks:
            # Exact: 10 bounces of 250 sends is 4%, not a float a hair under it.
            if Decimal(count) >= Decimal(str(threshold)) * window.sent:
                percent = round(100 * count / window.sent, 2)
                return f"{name}:{percent:g}%_of_{window.sent}_sends"
        return None


def _since_resume(item: ReputationModel, name: str) -> int:
    return int(getattr(item, name) or 0) - int(getattr(item, f"base_{name}") or 0)


def read_window(scope: str, now: float, policy: ReputationPolicy) -> Window:
    """One consistent Query, newest first: the `~resets` item, then the window's hour buckets."""
    resets = 0
    sent = bounced = complained = 0
    for item in ReputationModel.query(
        scope, ReputationModel.bucket >= policy.first_bucket(now), consistent_read=True, scan_index_forward=False
    ):
        if item.bucket == RESETS_BUCKET:
            resets = int(item.resets or 0)
            continue
        if policy.window_sends and sent >= policy.window_sends:
            break  # the most recent hours already hold the sends the window asks for
        sent += _since_resume(item, "sent")
        bounced += _since_resume(item, "bounced")
        complained += _since_resume(item, "complained")
    return Window(sent=sent, bounced=bounced, complained=complained, resets=resets)


def restart_window(scope: str) -> int:
    """An admin's resume: every bucket of the scope counts from zero again (its counters copied into
    `base_*`), then the scope's resets move on (see the module docstring). Returns the buckets reset."""
    reset = 0
    for item in ReputationModel.query(scope, ReputationModel.bucket < RESETS_BUCKET, consistent_read=True):
        if not any(_since_resume(item, name) for name in ("sent", "bounced", "complained")):
            continue
        item.update(
            actions=[
                ReputationModel.base_sent.set(ReputationModel.sent | 0),
                ReputationModel.base_bounced.set(ReputationModel.bounced | 0),
                ReputationModel.base_complained.set(ReputationModel.complained | 0),
            ]
        )
        reset += 1
    # update_if retries a conflict with a guard's transaction that checks this item.
    counts = ReputationModel.resets.does_not_exist() | (ReputationModel.resets >= 0)
    update_if(ReputationModel(scope, RESETS_BUCKET), [ReputationModel.resets.add(1)], counts)
    return reset


# ---------------------------------------------------------------- the guard


@dataclass(frozen=True)
class Hold:
    """A hold the guard wrote."""

    scope: str  # "user" | "service"
    scope_id: str
    reason: str
    window: Window
    paused_tasks: int = 0  # a tenant's tasks moved to paused


def guard(user_ids: Iterable[str], service_ids: Iterable[str], now: float, policy: ReputationPolicy) -> list[Hold]:
    """Reads the window of each tenant and service named (one Query each) and holds those over a
    threshold that are not held yet. Returns the holds written by this call."""
    holds: list[Hold] = []
    for user_id in dict.fromkeys(user_ids):
        window = read_window(user_scope(user_id), now, policy)
        reason = policy.breach(window)
        if reason is None:
            continue
        paused = hold_user(user_id, reason, now, resets_seen=window.resets)
        if paused is not None:
            holds.append(Hold("user", user_id, reason, window, paused))
    for service_id in dict.fromkeys(service_ids):
        window = read_window(service_scope(service_id), now, policy)
        reason = policy.breach(window)
        if reason is not None and hold_service(service_id, reason, now, resets_seen=window.resets):
            holds.append(Hold("service", service_id, reason, window))
    return holds
