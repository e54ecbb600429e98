"""Failover: the queued work of a service that cannot send (unhealthy, disabled, out of daily quota,
held by the reputation guard) moves to the other services its users may use, or its tasks show that
they wait and why.

Run by the service's own dispatcher invocation when it stops for one of those reasons (so within
one tick of the service: its schedule keeps firing while it cannot send):
- for each task that may send and is routed to the service, the user's available services
  (core.planning.routing: assigned, enabled, healthy, daily quota left) other than this one;
- none: the task moves to `waiting` with the reason (`no_healthy_service`,
  `daily_quota_exhausted:<service>`); its next send anywhere moves it back to `sending`
  (core.dispatch.recorder), e.g. when the service is healthy again or the UTC day turns;
- some: they join the task's routing first (so their dispatchers see the task), then each queued
  subtask moves to one of them by smooth weighted round robin over its plan position, with one
  conditional write (still `queued` on this service's queue): no attempt spent, and a subtask a
  dispatcher claimed meanwhile is left where it is, so nothing is sent twice. The subtasks keep
  their contact-id order, so the fairness of the receiving dispatchers is unchanged.
What the time budget leaves unmoved moves at the next tick."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.dispatch.control import control_changed
from core.dispatch.wakeups import WakeQueue, WakeReason
from core.planning.routing import assigned_at, routing_cycle, service_weights, user_capacities, waiting_reason
from core.states import DISPATCHABLE, TaskStatus
from core.storage.ids import queue_key
from core.storage.models import TASK_PLAN, SubtaskModel, TaskModel, UserModel, update_if
from core.task_transitions import move_task

QUERY_PAGE = 100


@dataclass
class FailoverReport:
    moved: int = 0
    waiting: list[str] = field(default_factory=list)  # tasks that now wait, with a reason
    targets: set[str] = field(default_factory=set)  # services that received work
    finished: bool = True  # False: the time budget ended with work left to move


def fail_over(
    service_id: str,
    reason: str,
    now: float,
    *,
    wake: WakeQueue | None,
    time_left: Callable[[], float],
) -> FailoverReport:
    """Moves the queued work of `service_id` (which cannot send, for `reason`) as the module says."""
    report = FailoverReport()
    capacities: dict[str, Any] = {}
    for task in TaskModel.active.query("active"):
        if task.status not in DISPATCHABLE or service_id not in set(task.plan.routing or []):
            continue
        if (task.scheduled_at or 0) > now or int(task.counts.queued or 0) <= 0:
            continue  # not due yet: its dispatchers look again at its time
        if task.user_id not in capacities:
            capacities[task.user_id] = user_capacities(UserModel.get(task.user_id, consistent_read=True), now)
        rest = [c for c in capacities[task.user_id] if c.service_id != service_id]
        others = [c for c in rest if c.available]
        if not others:
            # This service's own reason, unless another healthy one of the user's is out of quota too.
            sendable = [c for c in rest if c.enabled and c.healthy and not c.held]
            _wait(task, (waiting_reason(sendable) if sendable else None) or reason, now)
            report.waiting.append(task.task_id)
            continue
        cycle = routing_cycle(service_weights(others))
        _route_also(task, cycle)
        moved, finished = _move_queued(task, service_id, cycle, time_left)
        if moved:  # receiving dispatchers that found the task's queue empty read it again
            TaskModel(task.task_id).update(actions=[TaskModel.requeue_seq.add(1)])
        report.moved += moved
        report.targets.update(cycle)
        if not finished:
            report.finished = False
            break
    if report.targets:
        control_changed()  # their sending dispatchers reload the tasks' routing within a second
        if wake is not None:
            wake.wake(sorted(report.targets), WakeReason.FAILOVER)
    return report


def _wait(task: TaskModel, reason: str, now: float) -> None:
    if task.status == TaskStatus.WAITING:
        if task.reason != reason:
            update_if(task, [TaskModel.reason.set(reason)], TaskModel.status == TaskStatus.WAITING)
        return
    move_task(task, TaskStatus.WAITING, now, reason=reason)


def _route_also(task: TaskModel, services: list[str]) -> None:
    """Adds the services to the task's routing (what a dispatcher reads to send for the task), under
    the routing it was read with (another failover may have added some meanwhile: read again)."""
    while True:
        routing = list(task.plan.routing or [])
        added = [service_id for service_id in dict.fromkeys(services) if service_id not in routing]
        if not added:
            return
        if update_if(task, [TASK_PLAN.routing.set(routing + added)], TASK_PLAN.routing == routing):
            return
        task.refresh(consistent_read=True)


def _move_queued(
    task: TaskModel, service_id: str, cycle: list[str], time_left: Callable[[], float]
) -> tuple[int, bool]:
    """Moves each queued subtask of the task on `service_id` to its service in `cycle`."""
    source = queue_key(service_id, task.task_id)
    moved = 0
    last_key: dict[str, Any] | None = None
    while True:
        page = SubtaskModel.queue.query(source, limit=QUERY_PAGE, last_evaluated_key=last_key)
        for subtask in page:
            if time_left() <= 0:
                return moved, False
            target = assigned_at(cycle, int(subtask.seq))
            if update_if(
                subtask,
                [SubtaskModel.service_id.set(target), SubtaskModel.queue_key.set(queue_key(target, task.task_id))],
                (SubtaskModel.status == "queued") & (SubtaskModel.queue_key == source),
            ):
                moved += 1
        last_key = page.last_evaluated_key
        if not last_key:
            return moved, True
