"""`GET /api/scheduler/status` and `GET /api/scheduler/stats`, answered from counters.

What they read, whatever the number of subtasks:
- the scheduler item (running flag, last health check);
- the services in scope (administrators: all, a Scan of the services table; users: theirs);
- the tasks in scope from the task index (core.task_transitions.index_partition): `active` (may
  send) and `held` (paused) for status; stats adds `done#<day>` of today and yesterday (UTC);
- counters: each task's `counts` and sent counts per minute (on the task item), each service's usage
  today and its sent counters per minute (core.dispatch.rates), in BatchGetItems of 100 keys.

So a call costs a number of requests that grows with services and open tasks, never with subtasks
(tests/integration/test_scheduler_status.py counts them)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel

from core.api.auth import Caller
from core.api.ownership import load_services, tenant_user
from core.api.schemas import TaskCountsOut
from core.api.sending_rules_schemas import WarmupOut, warmup_out
from core.clock import Clock, iso, utc_day
from core.dispatch import rates
from core.dispatch.fairness import priority_rank, user_weight
from core.dispatch.schedules import SCHEDULER_STATE_KEY
from core.dispatch.send_windows import waiting_for_window
from core.dispatch.warmup import DayQuota, service_day_quota
from core.states import DISPATCHABLE, TaskStatus
from core.storage.models import EmailServiceModel, SchedulerStateModel, ServiceUsageModel, TaskModel, UserModel
from core.task_transitions import ACTIVE_PARTITION, HELD_PARTITION, finished_partition

SECONDS_PER_DAY = 86_400
_BATCH_GET_LIMIT = 100


class StatusOut(BaseModel):
    is_running: bool
    active_services: int  # enabled, healthy and not held services in the caller's scope
    total_queued_subtasks: int
    processing_rate: str  # "45 emails/min": sent over the last 5 minutes, per minute
    processing_rate_per_minute: float
    last_health_check: str | None


class TaskStatsOut(BaseModel):
    task_id: str
    name: str
    user_id: str
    status: str
    reason: str | None
    counts: TaskCountsOut
    rate_per_minute: float  # sent over the last 5 minutes, per minute
    estimated_finish: str | None  # from the paces of its services and who shares them; None when stalled
    service_ids: list[str]
    # Queued recipients whose local send window is shut now (docs/send-windows.md); 0 without a window.
    waiting_for_window: int = 0


class ServiceStatsOut(BaseModel):
    service_id: str
    name: str
    enabled: bool
    is_healthy: bool
    # why it does not send (unhealthy, disabled, reputation_hold:<why>, out of quota today:
    # daily_quota_exhausted:<id>, or warmup_allowance:<id> when its warm-up ramp caps the day)
    reason: str | None
    daily_quota: int  # as configured
    effective_daily_quota: int  # today's: the daily quota, capped by the warm-up ramp's allowance
    used_today: int
    remaining_quota: int  # of the effective daily quota
    usage_percentage: float
    last_sent: str | None
    last_health_check: str | None
    configured_rate_per_minute: float
    rate_per_minute: float  # sent over the last 5 minutes, per minute
    warnings: list[str]
    # The reputation guard's hold (core.deliverability.holds): why, and since when; None while it may send.
    sending_hold: str | None = None
    sending_hold_at: str | None = None
    warmup: WarmupOut | None = None  # the warm-up ramp, its day and today's allowance (docs/warmup.md)


class HeldUserOut(BaseModel):
    """A tenant whose sending the reputation guard holds: its tasks are paused (reason
    reputation_hold) until an administrator resumes it."""

    user_id: str
    reason: str  # e.g. bounce_rate:4.62%_of_260_sends
    since: str | None


class StatsOut(BaseModel):
    generated_at: str
    tasks: list[TaskStatsOut]
    services: list[ServiceStatsOut]
    held_users: list[HeldUserOut] = []  # the caller (a tenant), or the users of the tasks in scope


# ---------------------------------------------------------------- what a call reads


@dataclass
class _Scope:
    caller: Caller
    services: list[EmailServiceModel]
    tasks: list[TaskModel]


def _scheduler_item() -> SchedulerStateModel | None:
    try:
        return SchedulerStateModel.get(SCHEDULER_STATE_KEY, consistent_read=True)
    except SchedulerStateModel.DoesNotExist:
        return None


def _services_in_scope(caller: Caller) -> list[EmailServiceModel]:
    if caller.is_admin:
        return sorted(EmailServiceModel.scan(), key=lambda service: service.service_id)
    user = tenant_user(caller)
    services = load_services(user.service_ids or [])
    return [services[service_id] for service_id in dict.fromkeys(user.service_ids or []) if service_id in services]


def _tasks_in(partitions: Iterable[str], caller: Caller) -> list[TaskModel]:
    """Tasks in the given partitions of the task index: all of them, or the caller's own."""
    condition = None if caller.is_admin else TaskModel.active_sort.startswith(f"{caller.user_id}#")
    tasks: list[TaskModel] = []
    for partition in partitions:
        tasks.extend(TaskModel.active.query(partition, condition))
    return tasks


def _load(caller: Caller, now: float, *, finished: bool) -> _Scope:
    partitions = [ACTIVE_PARTITION, HELD_PARTITION]
    if finished:
        partitions += [finished_partition(now), finished_partition(now - SECONDS_PER_DAY)]
    return _Scope(caller, _services_in_scope(caller), _tasks_in(partitions, caller))


def _usage_today(services: list[EmailServiceModel], now: float) -> dict[str, int]:
    day = utc_day(now)
    keys = [(service.service_id, day) for service in services]
    used: dict[str, int] = {}
    for start in range(0, len(keys), _BATCH_GET_LIMIT):
        for item in ServiceUsageModel.batch_get(keys[start : start + _BATCH_GET_LIMIT]):
            used[item.service_id] = int(item.used or 0)
    return used


# ---------------------------------------------------------------- status


def scheduler_status(caller: Caller, clock: Clock) -> StatusOut:
    """SPEC §3 status. Administrators see the whole system; a user sees their own tasks and the
    services assigned to them (the rate is then their own tasks' rate)."""
    now = clock.now()
    scheduler = _scheduler_item()
    scope = _load(caller, now, finished=not caller.is_admin)
    queued = sum(int(task.counts.queued or 0) for task in scope.tasks if task.status != TaskStatus.CANCELLED)
    if caller.is_admin:
        sent = sum(rates.sent_in_window([service.service_id for service in scope.services], now).values())
    else:
        sent = sum(rates.task_sent_in_window(task, now) for task in scope.tasks)
    per_minute = rates.per_minute(sent)
    checked = scheduler.last_health_check if scheduler else None
    return StatusOut(
        is_running=bool(scheduler and scheduler.running),
        active_services=sum(
            1 for service in scope.services if service.enabled and service.is_healthy and not service.sending_hold
        ),
        total_queued_subtasks=queued,
        processing_rate=f"{per_minute:g} emails/min",
        processing_rate_per_minute=per_minute,
        last_health_check=iso(checked) if checked is not None else None,
    )


# ---------------------------------------------------------------- stats


def _service_reason(service: EmailServiceModel, remaining: int, quota: DayQuota | None = None) -> str | None:
    if not service.enabled:
        return "disabled"
    if not service.is_healthy:
        return service.health_reason or "unhealthy"
    if service.sending_hold:
        return f"reputation_hold:{service.sending_hold}"
    if remaining <= 0:
        return quota.exhausted_reason(service.service_id) if quota else f"daily_quota_exhausted:{service.service_id}"
    return None


def _can_send(service: EmailServiceModel, remaining: int) -> bool:
    return _service_reason(service, remaining) is None


def _estimated_finish(
    task: TaskModel,
    services: dict[str, EmailServiceModel],
    remaining: dict[str, int],
    sharing: _Sharing,
    now: float,
) -> str | None:
    """When the task's queued emails are out, at the paces of its services: each service's pace is
    shared by the users sending on it by their weights (core.dispatch.fairness), and a user's share
    by their tasks of the most urgent priority with work; a less urgent task's emails follow the
    user's more urgent ones. None when nothing of it can move now (paused, waiting, no service can
    send)."""
    queued = int(task.counts.queued or 0)
    if queued <= 0 or task.status not in DISPATCHABLE:
        return None
    user_per_second = task_per_second = 0.0
    rank = priority_rank(task)
    for service_id in dict.fromkeys(task.plan.routing or []):
        service = services.get(service_id)
        users = sharing.tasks.get(service_id, {})
        if service is None or not _can_send(service, remaining.get(service_id, 0)) or task.user_id not in users:
            continue
        weight = sharing.weights.get(task.user_id, 1)
        share = 1.0 / float(service.sending_rate) * weight / sum(sharing.weights.get(u, 1) for u in users)
        user_per_second += share
        task_per_second += share / users[task.user_id][rank]
    if task_per_second <= 0:
        return None
    start = max(now, float(task.scheduled_at or 0))
    return iso(start + sharing.ahead(task) / user_per_second + queued / task_per_second)


@dataclass
class _Sharing:
    """Who shares each service's pace: the users with a task that may send there, their weights,
    and per user how many of its tasks of each priority rank."""

    weights: dict[str, int]
    tasks: dict[str, dict[str, Counter[int]]]  # service -> user -> priority rank -> tasks
    sending: list[TaskModel]

    @classmethod
    def of(cls, tasks: list[TaskModel], weights: dict[str, int]) -> _Sharing:
        sending = [t for t in tasks if t.status in DISPATCHABLE and int(t.counts.queued or 0) > 0]
        by_service: dict[str, dict[str, Counter[int]]] = defaultdict(lambda: defaultdict(Counter))
        for task in sending:
            for service_id in dict.fromkeys(task.plan.routing or []):
                by_service[service_id][task.user_id][priority_rank(task)] += 1
        return cls(weights, by_service, sending)

    def ahead(self, task: TaskModel) -> int:
        """Emails of the user's more urgent tasks on any of the same services: they go first."""
        rank, routing = priority_rank(task), set(task.plan.routing or [])
        return sum(
            int(other.counts.queued or 0)
            for other in self.sending
            if other.user_id == task.user_id
            and priority_rank(other) < rank
            and routing.intersection(other.plan.routing or [])
        )


def scheduler_stats(caller: Caller, clock: Clock) -> StatsOut:
    """Per task (open ones, and those finished today or yesterday) and per service, in scope."""
    now = clock.now()
    scope = _load(caller, now, finished=True)
    used = _usage_today(scope.services, now)
    sent = rates.sent_in_window([service.service_id for service in scope.services], now)
    # Estimates need every service a task routes to, assigned to the caller or not any more.
    services = {service.service_id: service for service in scope.services}
    routed = {service_id for task in scope.tasks for service_id in task.plan.routing or []}
    missing = routed - set(services)
    if missing:
        services.update(load_services(missing))
        used.update(_usage_today([services[i] for i in missing if i in services], now))
    quotas = {sid: service_day_quota(s, now) for sid, s in services.items()}  # warm-up ramps applied
    remaining = {sid: max(0, quotas[sid].effective - used.get(sid, 0)) for sid in services}
    users = _users_in(scope)
    sharing = _Sharing.of(scope.tasks, {user_id: user_weight(user.weight) for user_id, user in users.items()})
    tasks = [
        TaskStatsOut(
            task_id=task.task_id,
            name=task.name,
            user_id=task.user_id,
            status=task.status,
            reason=task.reason,
            counts=TaskCountsOut(**(task.counts.as_dict() if task.counts else {})),
            rate_per_minute=rates.per_minute(rates.task_sent_in_window(task, now)),
            estimated_finish=_estimated_finish(task, services, remaining, sharing, now),
            service_ids=list(dict.fromkeys(task.plan.routing or [])),
            waiting_for_window=waiting_for_window(task, now) if task.status in DISPATCHABLE else 0,
        )
        for task in sorted(scope.tasks, key=lambda task: task.task_id)
    ]
    service_stats = []
    for service in scope.services:
        quota = quotas[service.service_id]
        used_today = used.get(service.service_id, 0)
        left = remaining[service.service_id]
        service_stats.append(
            ServiceStatsOut(
                service_id=service.service_id,
                name=service.name,
                enabled=bool(service.enabled),
                is_healthy=bool(service.is_healthy),
                reason=_service_reason(service, left, quota),
                daily_quota=quota.daily_quota,
                effective_daily_quota=quota.effective,
                used_today=used_today,
                remaining_quota=left,
                usage_percentage=round(100.0 * used_today / quota.effective, 1) if quota.effective else 100.0,
                last_sent=iso(service.last_sent) if service.last_sent is not None else None,
                last_health_check=iso(service.last_health_check) if service.last_health_check is not None else None,
                configured_rate_per_minute=round(60.0 / float(service.sending_rate), 2),
                rate_per_minute=rates.per_minute(sent.get(service.service_id, 0)),
                warnings=list(service.health_warnings or []),
                sending_hold=service.sending_hold,
                sending_hold_at=iso(service.sending_hold_at) if service.sending_hold_at is not None else None,
                warmup=warmup_out(quota),
            )
        )
    return StatsOut(generated_at=iso(now), tasks=tasks, services=service_stats, held_users=_held_users(users))


def _users_in(scope: _Scope) -> dict[str, UserModel]:
    """The caller, or (administrators) the users of the tasks in scope: their holds and weights
    (BatchGetItems of 100 keys, by users, never by subtasks)."""
    user_ids = sorted({task.user_id for task in scope.tasks} if scope.caller.is_admin else {scope.caller.user_id})
    users: dict[str, UserModel] = {}
    for start in range(0, len(user_ids), _BATCH_GET_LIMIT):
        keys = user_ids[start : start + _BATCH_GET_LIMIT]
        for user in UserModel.batch_get(
            keys, attributes_to_get=["user_id", "sending_hold", "sending_hold_at", "weight"]
        ):
            users[user.user_id] = user
    return users


def _held_users(users: dict[str, UserModel]) -> list[HeldUserOut]:
    """Held tenants among them: their held tasks sit in the `held` partition."""
    held = []
    for user in users.values():
        if user.sending_hold:
            since = iso(user.sending_hold_at) if user.sending_hold_at is not None else None
            held.append(HeldUserOut(user_id=user.user_id, reason=user.sending_hold, since=since))
    return sorted(held, key=lambda out: out.user_id)
