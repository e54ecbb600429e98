"""What an SES reply does to its subtask, its quota unit and its service: one table, `OUTCOMES`.

| SES reply                      | subtask                                    | quota unit | service               |
|--------------------------------|--------------------------------------------|------------|-----------------------|
| accepted (a message id)        | `sent`                                     | used       |                       |
| may have reached SES (timeout) | `unknown`, never resent                    | used       |                       |
| THROTTLED                      | back to `queued`, no attempt spent         | returned   | backs off             |
| DAILY_QUOTA                    | back to `queued`, no attempt spent         | returned   | stops for the UTC day |
| ACCOUNT                        | back to `queued`, no attempt spent         | returned   | unhealthy, stops      |
| TRANSIENT                      | retried later, attempt + 1 (then `failed`) | returned   |                       |
| PERMANENT                      | `failed` (the user's quota refunded)       | returned   |                       |

The error classes themselves come from core.dispatch.send_errors."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from core.dispatch.send_errors import SendError, SendErrorClass


class Move(StrEnum):
    SENT = "sent"
    UNKNOWN = "unknown"
    REQUEUE = "requeue"  # queued again at once, no attempt spent
    RETRY = "retry"  # queued again after the retry delay, one attempt spent, while attempts remain
    FAIL = "fail"


class ServiceEffect(StrEnum):
    NONE = "none"
    BACK_OFF = "back_off"
    STOP_FOR_THE_DAY = "stop_for_the_day"
    MARK_UNHEALTHY = "mark_unhealthy"


@dataclass(frozen=True)
class Outcome:
    move: Move
    quota_used: bool  # False: the service's quota unit goes back (SES did not take the email)
    service: ServiceEffect = ServiceEffect.NONE


SENT = Outcome(Move.SENT, quota_used=True)
MAY_HAVE_BEEN_SENT = Outcome(Move.UNKNOWN, quota_used=True)

OUTCOMES: dict[SendErrorClass, Outcome] = {
    SendErrorClass.THROTTLED: Outcome(Move.REQUEUE, quota_used=False, service=ServiceEffect.BACK_OFF),
    SendErrorClass.DAILY_QUOTA: Outcome(Move.REQUEUE, quota_used=False, service=ServiceEffect.STOP_FOR_THE_DAY),
    SendErrorClass.ACCOUNT: Outcome(Move.REQUEUE, quota_used=False, service=ServiceEffect.MARK_UNHEALTHY),
    SendErrorClass.TRANSIENT: Outcome(Move.RETRY, quota_used=False),
    SendErrorClass.PERMANENT: Outcome(Move.FAIL, quota_used=False),
}


def outcome_of(error: SendError | None) -> Outcome:
    """None: SES accepted the email."""
    if error is None:
        return SENT
    if error.may_have_been_sent:
        return MAY_HAVE_BEEN_SENT
    return OUTCOMES[error.error_class]
