"""Admin resume of what the reputation guard held (core.deliverability): the hold cleared, the
window restarted (otherwise the same old bounces would hold it again at once), and sending resumed.

Order: window first, then the hold, then the tasks. The window is restarted before the hold goes,
so no guard can hold the scope again with the old counts; the tasks move after the hold is gone,
so a held tenant never has a task that may send. A resume that failed half-way is finished by
calling it again: a tenant no longer held but with tasks the hold paused is resumed, not 409."""

from __future__ import annotations

from dataclasses import dataclass

from core.api.auth import Caller
from core.api.reputation_schemas import ServiceSendingResumedOut, UserSendingResumedOut
from core.api.schemas import is_identifier
from core.clock import Clock
from core.deliverability import holds
from core.deliverability.reputation import restart_window
from core.dispatch.wakeups import SQS_MAX_DELAY_SECONDS, WakeQueue, WakeReason
from core.errors import InvalidState, NotFound
from core.storage.models import EmailServiceModel, UserModel


class NotHeld(InvalidState):
    code = "not_held"


@dataclass(frozen=True)
class ResumeDeps:
    clock: Clock
    wake: WakeQueue | None = None


def _exists(model: type[UserModel] | type[EmailServiceModel], key: str, kind: str) -> None:
    if not is_identifier(key):
        raise NotFound(kind, key)
    try:
        model.get(key, consistent_read=True)
    except model.DoesNotExist as error:
        raise NotFound(kind, key) from error


def resume_user_sending(caller: Caller, user_id: str, deps: ResumeDeps) -> UserSendingResumedOut:
    """Admin only (403), unknown user 404, neither held nor with held tasks 409 `not_held`."""
    caller.require_admin()
    _exists(UserModel, user_id, "user")
    now = deps.clock.now()
    reset = restart_window(holds.user_scope(user_id))
    cleared = holds.clear_user_hold(user_id)
    resumed = holds.resume_held_tasks(user_id, now)
    if cleared is None and not resumed:
        raise NotHeld(f"user {user_id!r} is not held by the reputation guard")
    if deps.wake is not None:
        due = [task for task in resumed if (task.scheduled_at or now) - now <= SQS_MAX_DELAY_SECONDS]
        deps.wake.wake([s for task in due for s in task.plan.routing or []], WakeReason.RESUME)
    return UserSendingResumedOut(
        user_id=user_id,
        cleared_hold=cleared,
        resumed_task_ids=[task.task_id for task in resumed],
        window_buckets_reset=reset,
    )


def resume_service_sending(caller: Caller, service_id: str, deps: ResumeDeps) -> ServiceSendingResumedOut:
    """Admin only (403), unknown service 404, not held 409 `not_held`. Its dispatcher is woken: its
    waiting tasks move on by themselves at its first send (core.dispatch.recorder)."""
    caller.require_admin()
    _exists(EmailServiceModel, service_id, "email service")
    reset = restart_window(holds.service_scope(service_id))
    cleared = holds.clear_service_hold(service_id)
    if cleared is None:
        raise NotHeld(f"email service {service_id!r} is not held by the reputation guard")
    if deps.wake is not None:
        deps.wake.wake([service_id], WakeReason.RESUME)
    return ServiceSendingResumedOut(service_id=service_id, cleared_hold=cleared, window_buckets_reset=reset)
