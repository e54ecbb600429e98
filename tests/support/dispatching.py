"""Seeds a sendable world (services, users, senders, templates, planned tasks) and runs
dispatcher ticks in-process with an injected clock."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.hooks import HierarchicalEmitter

from core.clock import Clock
from core.dispatch.dispatcher import DispatcherDeps, DispatchReport, FaultHook, dispatch_service
from core.dispatch.schedules import SCHEDULER_STATE_KEY as SCHEDULER_KEY
from core.dispatch.wakeups import WakeQueue, WakeRequest
from core.mail.mx_groups import MxGroups
from core.planning.planner import PlannerDeps, PlanOutcome, plan_task
from core.settings import Settings
from core.storage.models import SchedulerStateModel, SenderModel, SubtaskModel, TaskModel, TemplateModel
from tests.support.planning import seed_contacts, seed_service, seed_task, seed_user

SENDER_DOMAIN = "news.example.com"


def start_scheduler(now: float) -> None:
    SchedulerStateModel(SCHEDULER_KEY, running=True, updated_at=now).save()
    boto3.client("ses").verify_domain_identity(Domain=SENDER_DOMAIN)


def seed_sender_and_template(user_id: str, now: float) -> tuple[str, str]:
    SenderModel(user_id, "snd_1", email=f"news@{SENDER_DOMAIN}", name="Newsroom", created_at=now).save()
    TemplateModel(
        user_id,
        "tpl_1",
        name="hello",
        subject="Hello {{ name }}",
        html="<p>Hi {{ name }}, your number is {{ number }}. <a href='{{ unsubscribe_url }}'>Unsubscribe</a></p>",
        text="Hi {{ name }}, your number is {{ number }}.",
        created_at=now,
    ).save()
    return "snd_1", "tpl_1"


def planner_deps(settings: Settings, clock: Clock, mx: MxGroups | None = None) -> PlannerDeps:
    """One planner invocation's dependencies, with time to spare (`mx`: MX grouping, None: off)."""
    return PlannerDeps(
        clock=clock,
        dynamodb=boto3.client("dynamodb"),
        subtasks_table=settings.subtasks_table,
        seconds_left=lambda: 600.0,
        owner=uuid.uuid4().hex,
        lease_seconds=300.0,
        mx=mx,
    )


def plan_now(task_id: str, settings: Settings, clock: Clock, mx: MxGroups | None = None) -> None:
    assert plan_task(task_id, planner_deps(settings, clock, mx)) is PlanOutcome.DONE


@dataclass
class World:
    settings: Settings
    clock: Any
    tasks: dict[str, list[str]] = field(default_factory=dict)  # user -> task ids

    def service(self, service_id: str, *, sending_rate: float = 1.0, daily_quota: int = 100_000) -> str:
        seed_service(service_id, self.clock.now(), sending_rate=sending_rate, daily_quota=daily_quota)
        return service_id

    def campaign(self, user_id: str, recipients: int, services: list[str], *, quota: int = 100_000) -> str:
        """A planned, queued task of `recipients` contacts for `user_id` (created on first use)."""
        now = self.clock.now()
        if user_id not in self.tasks:
            seed_user(user_id, quota, services, now)
            seed_sender_and_template(user_id, now)
            self.tasks[user_id] = []
        tag = f"list{len(self.tasks[user_id])}"
        offset = 10_000 * len(self.tasks[user_id])
        seed_contacts(user_id, recipients, now, tags=[tag], start=offset)
        task = seed_task(user_id, now, include=[tag])
        plan_now(task.task_id, self.settings, self.clock)
        self.tasks[user_id].append(task.task_id)
        return task.task_id

    def tick(
        self,
        service_id: str,
        *,
        budget: float = 59.0,
        ses: Any = None,
        fault: FaultHook | None = None,
        owner: str | None = None,
        max_in_flight: int = 1,
        wake: WakeQueue | None = None,
        request: WakeRequest | None = None,
        handoff_lead: float = 5.0,
    ) -> DispatchReport:
        deps = DispatcherDeps(
            clock=self.clock,
            ses=ses or boto3.client("sesv2", config=Config(retries={"max_attempts": 1})),
            dynamodb=boto3.client("dynamodb"),
            subtasks_table=self.settings.subtasks_table,
            owner=owner or uuid.uuid4().hex,
            budget_seconds=budget,
            lease_seconds=budget + 15,
            max_retries=self.settings.max_retries,
            retry_delay=self.settings.retry_delay_seconds,
            batch_size=self.settings.batch_size,
            unsubscribe_base_url="https://api.example.com/v1/unsubscribe",
            unsubscribe_signing_key=self.settings.unsubscribe_signing_key,
            max_in_flight=max_in_flight,
            wake=wake,
            handoff_lead_seconds=handoff_lead,
        )
        if fault is not None:
            deps.fault = fault
        return dispatch_service(service_id, deps, request)


def sent_subtasks(task_id: str | None = None) -> list[SubtaskModel]:
    return sorted(
        (s for s in SubtaskModel.scan() if s.status == "sent" and (task_id is None or s.task_id == task_id)),
        key=lambda s: float(s.sent_at or 0),
    )


def task(task_id: str) -> TaskModel:
    return TaskModel.get(task_id, consistent_read=True)


@contextmanager
def dynamodb_requests() -> Iterator[Counter[str]]:
    """Counts DynamoDB operations made by every botocore client in this process (PynamoDB's too)."""
    counts: Counter[str] = Counter()
    original = HierarchicalEmitter._emit

    def emit(self: HierarchicalEmitter, event_name: str, *args: Any, **kwargs: Any) -> Any:
        if event_name.startswith("before-call.dynamodb."):
            counts[event_name.rsplit(".", 1)[1]] += 1
        return original(self, event_name, *args, **kwargs)

    HierarchicalEmitter._emit = emit  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        HierarchicalEmitter._emit = original  # type: ignore[method-assign]
