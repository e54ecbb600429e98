"""The refund sweep of a cancelled task, run by the planner function (job "cancel").

Quota reserved for a task comes back exactly once per email that will never be sent:
  - the part the planner reserved but never wrote as subtasks (cancelled mid-planning), once;
  - each queued subtask this sweep moves to `cancelled`. The move is a conditional write
    (`status = queued`), so it races safely with a dispatcher's claim: exactly one wins.
Subtasks written by a planner chunk that was never committed are covered by the first part, so
only subtasks with `seq < plan.written` are refunded individually. A crash between moving a page
of subtasks and recording their refund loses that page's refund (never refunds twice)."""

from __future__ import annotations

from core.errors import DomainError
from core.planning.planner import PlannerDeps, PlanOutcome, acquire_lease, release_lease
from core.refunds import refund_quota
from core.states import SubtaskStatus, TaskStatus
from core.storage.ids import SUBTASK_SHARDS
from core.storage.models import TASK_COUNTS, TASK_PLAN, SubtaskModel, TaskModel, update_if

SWEEP_PAGE = 100


class SweepBusy(DomainError):
    """Another run holds the task's lease. The job must come back later (SQS redelivers it after
    the visibility timeout, which outlasts any lease), because a planner that died holding the
    lease would otherwise leave the task unrefunded."""

    code = "sweep_busy"


def _owns(deps: PlannerDeps) -> object:
    return (TaskModel.planner_lease_owner == deps.owner) & (TaskModel.status == TaskStatus.CANCELLED)


def _refund_unplanned(task: TaskModel, deps: PlannerDeps) -> bool:
    """False: the lease was lost (its holder finishes the sweep)."""
    reserved = int(task.quota_reserved or 0)
    unplanned = 0 if task.plan.phase == "done" else reserved - int(task.plan.written)
    return refund_quota(
        task_id=task.task_id,
        user_id=task.user_id,
        units=max(unplanned, 0),
        task_actions=[TASK_PLAN.phase.set("swept-unplanned"), TASK_PLAN.cursor.set("00:")],
        task_condition=_owns(deps) & (TASK_PLAN.phase != "swept-unplanned"),
    )


def _cancel_queued(subtask: SubtaskModel) -> bool:
    return update_if(  # False: a dispatcher claimed it first
        subtask,
        [SubtaskModel.status.set(SubtaskStatus.CANCELLED), SubtaskModel.queue_key.remove()],
        SubtaskModel.status == SubtaskStatus.QUEUED,
    )


def sweep_cancelled_task(task_id: str, deps: PlannerDeps) -> PlanOutcome:
    task = acquire_lease(task_id, deps, TaskStatus.CANCELLED)
    if task is None:
        try:
            current = TaskModel.get(task_id, consistent_read=True)
        except TaskModel.DoesNotExist:
            return PlanOutcome.SKIPPED
        if current.status == TaskStatus.CANCELLED:
            raise SweepBusy(f"task {task_id} is leased by another run; retry after its lease")
        return PlanOutcome.SKIPPED
    if task.plan.phase != "swept-unplanned":
        if not _refund_unplanned(task, deps):
            return PlanOutcome.SKIPPED  # lease lost; its holder finishes the sweep
        task.refresh(consistent_read=True)
    committed = int(task.plan.written)
    # The sweep position is "<shard>:<contact id>", kept in plan.cursor (planning is over).
    while True:
        shard_text, _, after = (task.plan.cursor or "00:").partition(":")
        shard = int(shard_text or 0)
        if shard >= SUBTASK_SHARDS:
            release_lease(task, deps)
            return PlanOutcome.DONE
        if deps.seconds_left() <= 0:
            release_lease(task, deps)
            return PlanOutcome.CONTINUE
        partition = f"{task_id}#{shard:02d}"
        condition = SubtaskModel.contact_id > after if after else None
        page = list(SubtaskModel.query(partition, condition, limit=SWEEP_PAGE, consistent_read=True))
        cancelled = [s for s in page if s.status == SubtaskStatus.QUEUED and _cancel_queued(s)]
        refund = sum(1 for s in cancelled if int(s.seq) < committed)
        next_cursor = f"{shard:02d}:{page[-1].contact_id}" if len(page) == SWEEP_PAGE else f"{shard + 1:02d}:"
        advanced = refund_quota(
            task_id=task_id,
            user_id=task.user_id,
            units=refund,
            task_actions=[
                TASK_PLAN.cursor.set(next_cursor),
                TASK_COUNTS.cancelled.add(len(cancelled)),
                TASK_COUNTS.queued.add(-len(cancelled)),
            ],
            task_condition=_owns(deps) & (TASK_PLAN.cursor == task.plan.cursor),
        )
        if not advanced:
            return PlanOutcome.SKIPPED
        task.refresh(consistent_read=True)
