"""What a sending dispatcher looks at each second when its claim does not (claims check the same
controls in their transaction: core.dispatch.claims), in one request: the scheduler's running flag
and control sequence, and its own service's lease and wake count. Every control change (pause, resume,
cancel, a task queued, a service changed) bumps the control sequence (`control_changed`), so the
dispatcher reloads its tasks and service only when something changed."""

from __future__ import annotations

from dataclasses import dataclass

from core.dispatch.lease import service_state_key
from core.dispatch.schedules import SCHEDULER_STATE_KEY
from core.states import DISPATCHABLE
from core.storage.models import SchedulerStateModel, TaskModel


@dataclass(frozen=True)
class ControlSnapshot:
    running: bool
    control_seq: int
    lease_owner: str | None
    wake_seq: int


def read_control(service_id: str) -> ControlSnapshot:
    """One consistent BatchGetItem of the scheduler item and the service's state item."""
    mine = service_state_key(service_id)
    items = {
        item.state_key: item
        for item in SchedulerStateModel.batch_get([SCHEDULER_STATE_KEY, mine], consistent_read=True)
    }
    scheduler = items.get(SCHEDULER_STATE_KEY)
    state = items.get(mine)
    return ControlSnapshot(
        running=bool(scheduler and scheduler.running),
        control_seq=int(scheduler.control_seq or 0) if scheduler else 0,
        lease_owner=state.lease_owner if state else None,
        wake_seq=int(state.wake_seq or 0) if state else 0,
    )


def services_with_work(now: float) -> list[str]:
    """The services that tasks which may send now are routed to (one Query of the sparse `active`
    index, whose size is the number of open tasks, not of subtasks)."""
    services: dict[str, None] = {}
    for task in TaskModel.active.query("active"):
        if task.status in DISPATCHABLE and (task.scheduled_at or 0) <= now:
            services.update(dict.fromkeys(task.plan.routing or []))
    return list(services)


def control_changed() -> None:
    """Tells sending dispatchers to reload their tasks and service at their next look (≤ 1 s)."""
    SchedulerStateModel(SCHEDULER_STATE_KEY).update(actions=[SchedulerStateModel.control_seq.add(1)])
