from __future__ import annotations

from typing import Annotated

from api_context import current_caller, deps
from api_responses import AUTH, CREATE, documented, link
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from core.api import failures, tasks
from core.api.schemas import (
    DEFAULT_FAILURES_PAGE,
    MAX_FAILURES_PAGE,
    FailurePage,
    FailureStatus,
    RetryFailedOut,
    TaskCreated,
    TaskIn,
    TaskOut,
    TaskPage,
)

router = Router()

# The new task's id feeds the routes that read and steer it (OpenAPI links).
_NEW_TASK = {"task_id": "$response.body#/task_id"}
_TASK_LINKS = {
    "GetTask": link("GET", "/api/tasks/{task_id}", **_NEW_TASK),
    "CancelTask": link("POST", "/api/tasks/{task_id}/cancel", **_NEW_TASK),
    "PauseTask": link("POST", "/api/scheduler/tasks/{task_id}/pause", **_NEW_TASK),
    "ResumeTask": link("POST", "/api/scheduler/tasks/{task_id}/resume", **_NEW_TASK),
    "ListFailures": link("GET", "/api/tasks/{task_id}/failures", **_NEW_TASK),
    "RetryFailed": link("POST", "/api/tasks/{task_id}/retry-failed", **_NEW_TASK),
}


def _task_deps() -> tasks.TaskDeps:
    api = deps()
    return tasks.TaskDeps(clock=api.clock, sqs=api.sqs, planner_queue_url=api.settings.planner_queue_url)


@router.post("/api/tasks", responses=documented(201, CREATE, 403, 404, links=_TASK_LINKS))
def create_task(request: TaskIn) -> tuple[TaskCreated, int]:
    return tasks.create_task(current_caller(router), request, _task_deps()), 201


@router.get("/api/tasks", responses=documented(200, AUTH))
def list_tasks(
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> TaskPage:
    return tasks.list_tasks(current_caller(router), cursor, limit)


@router.get("/api/tasks/<task_id>", responses=documented(200, AUTH, 404))
def get_task(task_id: str) -> TaskOut:
    return tasks.get_task(current_caller(router), task_id)


@router.post("/api/tasks/<task_id>/cancel", responses=documented(200, AUTH, 404, 409, 503))
def cancel_task(task_id: str) -> TaskOut:
    return tasks.cancel_task(current_caller(router), task_id, _task_deps())


@router.get("/api/tasks/<task_id>/failures", responses=documented(200, AUTH, 404))
def list_failures(
    task_id: str,
    status: Annotated[FailureStatus, Query()] = "failed",
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FAILURES_PAGE)] = DEFAULT_FAILURES_PAGE,
) -> FailurePage:
    return failures.list_failures(current_caller(router), task_id, status, cursor, limit)


@router.post("/api/tasks/<task_id>/retry-failed", responses=documented(200, AUTH, 404, 409, 503))
def retry_failed(task_id: str) -> RetryFailedOut:
    api = deps()
    return failures.retry_failed(current_caller(router), task_id, failures.RetryDeps(clock=api.clock, wake=api.wake))
