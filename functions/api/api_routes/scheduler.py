from __future__ import annotations

from api_context import current_caller, deps
from api_responses import AUTH, documented
from aws_lambda_powertools.event_handler.api_gateway import Router

from core.api import scheduler_control
from core.api import scheduler_status as status
from core.api.scheduler_status import StatsOut, StatusOut
from core.api.schemas import SchedulerStateOut, TaskOut

router = Router()


def _control_deps() -> scheduler_control.ControlDeps:
    api = deps()
    return scheduler_control.ControlDeps(
        clock=api.clock, scheduler=api.scheduler, schedules=api.schedules, wake=api.wake
    )


@router.post("/api/scheduler/start", responses=documented(200, AUTH, 403))
def start_scheduler() -> SchedulerStateOut:
    return scheduler_control.set_running(current_caller(router), True, _control_deps())


@router.post("/api/scheduler/stop", responses=documented(200, AUTH, 403))
def stop_scheduler() -> SchedulerStateOut:
    return scheduler_control.set_running(current_caller(router), False, _control_deps())


@router.post("/api/scheduler/tasks/<task_id>/pause", responses=documented(200, AUTH, 404, 409))
def pause_task(task_id: str) -> TaskOut:
    return scheduler_control.pause_task(current_caller(router), task_id, _control_deps())


@router.post("/api/scheduler/tasks/<task_id>/resume", responses=documented(200, AUTH, 404, 409))
def resume_task(task_id: str) -> TaskOut:
    return scheduler_control.resume_task(current_caller(router), task_id, _control_deps())


@router.post("/api/scheduler/tasks/<task_id>/send-late", responses=documented(200, AUTH, 404, 409))
def send_task_late(task_id: str) -> TaskOut:
    return scheduler_control.send_task_late(current_caller(router), task_id, _control_deps())


@router.get("/api/scheduler/status", responses=documented(200, AUTH, 403))
def scheduler_status() -> StatusOut:
    return status.scheduler_status(current_caller(router), deps().clock)


@router.get("/api/scheduler/stats", responses=documented(200, AUTH, 403))
def scheduler_stats() -> StatsOut:
    return status.scheduler_stats(current_caller(router), deps().clock)
