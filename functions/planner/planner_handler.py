"""Planner Lambda: SQS jobs -> plan a task (or sweep a cancelled one) as far as time allows,
then enqueue a continuation. Failed records are retried by SQS (partial batch response)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from core.clock import Clock, SystemClock
from core.dispatch.wakeups import WakeQueue
from core.mail.mx_groups import MxGroups, dns_resolver
from core.planning.cancellation import sweep_cancelled_task
from core.planning.planner import PlannerDeps, PlanOutcome, plan_task
from core.planning.planner_jobs import PlannerJob, enqueue
from core.settings import Settings, load_settings
from core.storage.models import bind_tables

logger = Logger()
processor = BatchProcessor(event_type=EventType.SQS)


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    dynamodb: Any
    sqs: Any
    mx: MxGroups | None  # kept with the container: a domain is looked up once per container


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    settings = load_settings()
    bind_tables(settings)
    config = Config(retries={"mode": "standard", "max_attempts": 5})
    return Runtime(
        settings=settings,
        clock=SystemClock(),
        dynamodb=boto3.client("dynamodb", config=config),
        sqs=boto3.client("sqs", config=config),
        mx=MxGroups(dns_resolver(settings.mx_lookup_seconds), budget_seconds=settings.mx_lookup_seconds)
        if settings.mx_grouping
        else None,
    )


def run_job(job: PlannerJob, context: LambdaContext) -> PlanOutcome:
    rt = runtime()
    margin = rt.settings.planner_safety_margin_seconds
    deps = PlannerDeps(
        clock=rt.clock,
        dynamodb=rt.dynamodb,
        subtasks_table=rt.settings.subtasks_table,
        seconds_left=lambda: context.get_remaining_time_in_millis() / 1000 - margin,
        owner=f"{context.aws_request_id}:{uuid.uuid4().hex[:8]}",
        lease_seconds=rt.settings.planner_lease_seconds,
        page_size=rt.settings.planner_page_size,
        wake=WakeQueue.from_settings(rt.sqs, rt.settings),
        mx=rt.mx,
    )
    outcome = plan_task(job.task_id, deps) if job.job == "plan" else sweep_cancelled_task(job.task_id, deps)
    logger.info("planner job finished", extra={"task_id": job.task_id, "job": job.job, "outcome": outcome})
    if outcome is PlanOutcome.CONTINUE:
        enqueue(rt.sqs, rt.settings.planner_queue_url, job)
    elif outcome is PlanOutcome.CANCELLED:
        enqueue(rt.sqs, rt.settings.planner_queue_url, PlannerJob(task_id=job.task_id, job="cancel"))
    return outcome


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    def handle(record: SQSRecord) -> str:
        return run_job(PlannerJob.model_validate_json(record.body), context).value

    return process_partial_response(event=event, record_handler=handle, processor=processor, context=context)
