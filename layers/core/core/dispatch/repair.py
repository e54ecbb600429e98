"""Repair after a crash: what a dead invocation left `sending` becomes `unknown` (never re-sent),
and the counters of a drained task left short by a killed flush are recounted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.dispatch.claims import batch_owner, journal_task_id, parse_journal_key
from core.dispatch.lease import service_state_key
from core.states import DISPATCHABLE, SubtaskStatus
from core.storage.ids import SUBTASK_SHARDS, queue_key
from core.storage.models import (
    TASK_COUNTS,
    SchedulerStateModel,
    SubtaskModel,
    TaskModel,
    update_if,
)
from core.task_transitions import complete_if_done

if TYPE_CHECKING:
    from core.dispatch.dispatcher import DispatcherDeps


def recover_in_flight(state: SchedulerStateModel, deps: DispatcherDeps) -> int:
    """Subtasks a dead invocation left `sending` may or may not have reached SES: `unknown`. They are
    the keys of the in-flight journal on the service's lease item (`state`, as the lease was taken)
    that are still claimed by the batch's owner; the batches then leave the journal."""
    journal = state.inflight.as_dict() if state.inflight else {}
    recovered: dict[str, int] = {}
    for batch_id, keys in journal.items():
        owner = batch_owner(batch_id)
        for key in keys:
            partition, contact_id = parse_journal_key(key)
            if not update_if(
                SubtaskModel(partition, contact_id),
                [
                    SubtaskModel.status.set(SubtaskStatus.UNKNOWN),
                    SubtaskModel.error.set("dispatcher stopped between claim and record; not retried"),
                    SubtaskModel.failed_at.set(deps.clock.now()),
                ],
                (SubtaskModel.status == SubtaskStatus.SENDING) & (SubtaskModel.claim_owner == owner),
            ):
                continue  # recorded before the crash, or given back
            task_id = journal_task_id(key)
            recovered[task_id] = recovered.get(task_id, 0) + 1
    for task_id, count in recovered.items():
        TaskModel(task_id).update(actions=[TASK_COUNTS.queued.add(-count), TASK_COUNTS.unknown.add(count)])
        complete_if_done(task_id, deps.clock.now())
    if journal:
        update_if(
            state,
            [SchedulerStateModel.inflight[batch_id].remove() for batch_id in journal],
            SchedulerStateModel.lease_owner == deps.owner,
        )
    return sum(recovered.values())


def _in_flight_tasks(states: list[SchedulerStateModel], owner: str) -> set[str]:
    """Tasks with a claim journalled by another invocation on any of these services' lease items
    (this invocation's own claims still in flight are `sending`, which the recount looks for)."""
    return {
        journal_task_id(key)
        for state in states
        for batch_id, keys in (state.inflight.as_dict() if state.inflight else {}).items()
        if batch_owner(batch_id) != owner
        for key in keys
    }


def _another_dispatcher_is_live(states: list[SchedulerStateModel], owner: str, now: float) -> bool:
    """A live lease holder may have written records whose counters it has not moved yet."""
    return any(state.lease_owner != owner and float(state.lease_until or 0) > now for state in states)


def reconcile_if_drained(task: TaskModel, now: float, owner: str) -> None:
    """Repairs the counters of a task that has nothing left to send but still counts some queued.

    Counters move in a flush after the batch of records it describes; an invocation killed between
    the two leaves `counts.queued` too high and the task would never complete. When no subtask of
    the task is queued (now or for a retry) on any of its services, nor in flight, nothing else
    writes its send counters, so they can be recounted from the subtasks and set. A dispatcher of the
    task's other services that still holds its lease may have written records without moving their
    counters yet, so the repair waits until no other lease on those services is live."""
    services = sorted(set(task.plan.routing or []))
    keys = [service_state_key(service_id) for service_id in services]
    states = list(SchedulerStateModel.batch_get(keys, consistent_read=True))
    if _another_dispatcher_is_live(states, owner, now):
        return  # a later tick repairs it, once that invocation has flushed or died
    if task.task_id in _in_flight_tasks(states, owner):
        return  # a dead invocation's claims: the service's next holder marks them `unknown` first
    for service_id in services:
        if next(iter(SubtaskModel.queue.query(queue_key(service_id, task.task_id), limit=1)), None):
            return
    # Work re-queued (retry-failed) after the recount read the subtasks must not be overwritten.
    seen = TaskModel.get(task.task_id, consistent_read=True, attributes_to_get=["task_id", "requeue_seq"])
    requeue_seq = seen.requeue_seq
    unchanged = TaskModel.requeue_seq.does_not_exist() if requeue_seq is None else TaskModel.requeue_seq == requeue_seq
    statuses: dict[str, int] = {}
    for shard in range(SUBTASK_SHARDS):
        for subtask in SubtaskModel.query(f"{task.task_id}#{shard:02d}", attributes_to_get=["status"]):
            statuses[subtask.status] = statuses.get(subtask.status, 0) + 1
    if statuses.get(SubtaskStatus.QUEUED) or statuses.get(SubtaskStatus.SENDING):
        return
    repaired = update_if(
        TaskModel(task.task_id),
        [
            TASK_COUNTS.queued.set(0),
            TASK_COUNTS.sent.set(statuses.get(SubtaskStatus.SENT, 0)),
            TASK_COUNTS.failed.set(statuses.get(SubtaskStatus.FAILED, 0)),
            TASK_COUNTS.unknown.set(statuses.get(SubtaskStatus.UNKNOWN, 0)),
        ],
        TaskModel.status.is_in(*DISPATCHABLE) & unchanged,
    )
    if not repaired:
        return
    complete_if_done(task.task_id, now)
