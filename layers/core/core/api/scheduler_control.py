"""Operator control of sending: start/stop the whole scheduler (the running flag plus every
service's dispatch schedule), pause/resume one task, and send-late (a user's confirmation that a
task the late-start guard expired is to be sent anyway: core.late_start). Every action is idempotent and every state
change is a conditional write; a dispatcher sees it on its next pick."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.api.auth import Caller
from core.api.ownership import load_task
from core.api.schemas import SchedulerStateOut, TaskOut, task_out
from core.clock import Clock, iso
from core.deliverability.holds import pause_if_held, require_not_held
from core.dispatch.control import services_with_work
from core.dispatch.schedules import SCHEDULER_STATE_KEY, ScheduleConfig, sync_all_schedules
from core.dispatch.wakeups import SQS_MAX_DELAY_SECONDS, WakeQueue, WakeReason
from core.errors import InvalidState
from core.late_start import SEND_LATE_ROUTE, NotExpired, TaskExpired, confirm_late_start
from core.states import DISPATCHABLE, TaskStatus, can_move
from core.storage.models import SchedulerStateModel, update_if
from core.task_transitions import move_task


@dataclass(frozen=True)
class ControlDeps:
    clock: Clock
    scheduler: Any  # boto3 EventBridge Scheduler client
    schedules: ScheduleConfig
    wake: WakeQueue | None = None


# ---------------------------------------------------------------- start / stop


def set_running(caller: Caller, running: bool, deps: ControlDeps) -> SchedulerStateOut:
    """Sets the running flag (creating the state item if missing), then brings every service's
    schedule in line. Idempotent: a start while running writes nothing and keeps `updated_at` (the
    time of the last real change) but still re-syncs the schedules, which repairs any drift."""
    caller.require_admin()
    state = SchedulerStateModel(SCHEDULER_STATE_KEY)
    changed = update_if(
        state,
        [SchedulerStateModel.running.set(running), SchedulerStateModel.updated_at.set(deps.clock.now())],
        SchedulerStateModel.running.does_not_exist() | (SchedulerStateModel.running != running),
    )
    if not changed:
        state = SchedulerStateModel.get(SCHEDULER_STATE_KEY, consistent_read=True)
    # The flag is written before the scan: a service created meanwhile either is in the scan or
    # reads the new flag when it re-checks it after saving (core.api.email_services).
    services = sync_all_schedules(deps.scheduler, deps.schedules, running)
    if running and deps.wake is not None:
        # Sending starts now, not at each schedule's first tick (up to a minute away).
        deps.wake.wake(services_with_work(deps.clock.now()), WakeReason.START)
    return SchedulerStateOut(
        is_running=bool(state.running),
        services=services,
        updated_at=iso(state.updated_at) if state.updated_at is not None else None,
    )


# ---------------------------------------------------------------- pause / resume


def pause_task(caller: Caller, task_id: str, deps: ControlDeps) -> TaskOut:
    """scheduled | queued | sending -> paused. The task leaves the sparse `active` index, so no
    dispatcher picks it again; a send already under way finishes. Pausing a paused task is a no-op."""
    task = load_task(caller, task_id)
    if task.status != TaskStatus.PAUSED:
        if not can_move(task.status, TaskStatus.PAUSED):
            raise InvalidState(f"a {task.status} task cannot be paused")
        # Announced: a dispatcher sending it stops within a second.
        if not move_task(task, TaskStatus.PAUSED, deps.clock.now()):
            task.refresh(consistent_read=True)
            if task.status != TaskStatus.PAUSED:
                raise InvalidState(f"the task became {task.status} meanwhile and cannot be paused")
    return task_out(task)


def resume_task(caller: Caller, task_id: str, deps: ControlDeps) -> TaskOut:
    """paused -> queued, or scheduled while its `scheduled_at` is still ahead; the task rejoins the
    `active` index. Resuming a task that is not paused but may send (queued, ...) is a no-op. While
    the reputation guard holds the tenant's sending it is 409 `reputation_hold`, for everyone: an
    admin resumes the tenant instead (POST /api/users/{id}/resume-sending)."""
    task = load_task(caller, task_id)
    if task.status != TaskStatus.PAUSED:
        if TaskStatus(task.status) in DISPATCHABLE:
            return task_out(task)
        if task.status == TaskStatus.EXPIRED:
            raise TaskExpired(f"the task expired ({task.reason}): to send it anyway, {SEND_LATE_ROUTE}")
        raise InvalidState(f"a {task.status} task cannot be resumed")
    require_not_held(task.user_id)
    now = deps.clock.now()
    target = TaskStatus.SCHEDULED if task.scheduled_at is not None and task.scheduled_at > now else TaskStatus.QUEUED
    if not move_task(task, target, now, sources=[TaskStatus.PAUSED]):  # announced: dispatchers reload
        task.refresh(consistent_read=True)
        if TaskStatus(task.status) not in DISPATCHABLE:
            raise InvalidState(f"the task became {task.status} meanwhile and cannot be resumed")
        return task_out(task)
    if pause_if_held(task, now):  # held meanwhile: the hold's sweep may not have seen this move yet
        require_not_held(task.user_id)
    if deps.wake is not None:  # a task due within SQS's 15-minute delay is woken at its time
        delay = (task.scheduled_at or now) - now
        if delay <= SQS_MAX_DELAY_SECONDS:
            deps.wake.wake(task.plan.routing or [], WakeReason.RESUME, delay_seconds=delay)
    return task_out(task)


# ---------------------------------------------------------------- send late


def send_task_late(caller: Caller, task_id: str, deps: ControlDeps) -> TaskOut:
    """expired -> queued, confirmed: the late-start guard never expires it again (core.late_start),
    and its services are woken. A task already confirmed is a no-op; any other is 409 `not_expired`.
    While the reputation guard holds the tenant it is 409 `reputation_hold`, as for resume."""
    task = load_task(caller, task_id)
    if task.status != TaskStatus.EXPIRED:
        if task.late_start_confirmed:
            return task_out(task)
        raise NotExpired(f"a {task.status} task is not expired: only an expired task is sent late")
    require_not_held(task.user_id)
    now = deps.clock.now()
    if not confirm_late_start(task, now):  # announced: dispatchers reload
        task.refresh(consistent_read=True)
        if not task.late_start_confirmed:  # cancelled meanwhile
            raise NotExpired(f"the task became {task.status} meanwhile and cannot be sent late")
        return task_out(task)
    if pause_if_held(task, now):  # held meanwhile: the hold's sweep may not have seen this move yet
        require_not_held(task.user_id)
    if deps.wake is not None:
        deps.wake.wake(task.plan.routing or [], WakeReason.RESUME)
    return task_out(task)
