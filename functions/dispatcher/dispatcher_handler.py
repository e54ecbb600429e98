"""Dispatcher Lambda for one email service: an EventBridge Scheduler tick (`{"service_id": …}`, the
watchdog) or a message of the dispatch wake-up queue (a wake-up, or a hand-off to a successor)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from core.clock import Clock, SystemClock
from core.dispatch.dispatcher import DispatcherDeps, DispatchReport, dispatch_service
from core.dispatch.domain_throttles import ThrottlePolicy
from core.dispatch.metrics import dispatch_metrics, publish
from core.dispatch.wakeups import WakeQueue, WakeRequest
from core.secrets import resolve_signing_key
from core.settings import Settings, load_settings
from core.storage.models import bind_tables

logger = Logger()

# The lease must outlive this invocation: Lambda kills it at its timeout, so a lease that has
# expired can only belong to a dead invocation.
LEASE_MARGIN_SECONDS = 5.0
# Stop this long before Lambda's own deadline even if the configured budget is longer.
DEADLINE_MARGIN_SECONDS = 10.0


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    ses: Any
    dynamodb: Any
    wake: WakeQueue


# SES errors are classified and retried by the dispatcher itself (throttling backs off, transient
# errors are retried after retry_delay): botocore must not retry them silently.
_SES_CONFIG = Config(retries={"mode": "standard", "max_attempts": 1})


@lru_cache(maxsize=32)
def ses_for_region(region: str) -> Any:
    """One sesv2 client per region a service sends from, made once per container."""
    return boto3.client("sesv2", region_name=region, config=_SES_CONFIG)


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    secretsmanager = boto3.client("secretsmanager", config=Config(retries={"mode": "standard", "max_attempts": 3}))
    settings = resolve_signing_key(load_settings(), secretsmanager)
    bind_tables(settings)
    return Runtime(
        settings=settings,
        clock=SystemClock(),
        ses=boto3.client("sesv2", config=_SES_CONFIG),
        dynamodb=boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 5})),
        wake=WakeQueue.from_settings(
            boto3.client("sqs", config=Config(retries={"mode": "standard", "max_attempts": 3})), settings
        ),
    )


def deps_for(context: LambdaContext, rt: Runtime) -> DispatcherDeps:
    seconds_to_kill = context.get_remaining_time_in_millis() / 1000
    settings = rt.settings
    return DispatcherDeps(
        clock=rt.clock,
        ses=rt.ses,
        dynamodb=rt.dynamodb,
        subtasks_table=settings.subtasks_table,
        owner=f"{context.aws_request_id}:{uuid.uuid4().hex[:8]}",
        budget_seconds=min(settings.dispatcher_budget_seconds, seconds_to_kill - DEADLINE_MARGIN_SECONDS),
        lease_seconds=seconds_to_kill + LEASE_MARGIN_SECONDS,
        max_retries=settings.max_retries,
        retry_delay=settings.retry_delay_seconds,
        batch_size=settings.batch_size,
        unsubscribe_base_url=settings.unsubscribe_base_url,
        unsubscribe_signing_key=settings.unsubscribe_signing_key,
        render_budget_seconds=settings.render_budget_ms / 1000,
        wake=rt.wake,
        handoff_lead_seconds=settings.dispatcher_handoff_lead_seconds,
        ses_for_region=ses_for_region,
        default_max_lateness=float(settings.default_max_lateness_seconds),
        deferral_policy=ThrottlePolicy(default_per_minute=settings.deferral_default_per_minute),
    )


def publish_metrics(report: DispatchReport) -> None:
    """Sent, Failed, Throttled, Unknown and PaceAchieved of this invocation (core.dispatch.metrics).
    A metric lost must not fail the invocation: its emails are sent and recorded."""
    try:
        publish(dispatch_metrics(report, report.interval))  # the interval it paced at: no extra read
    except Exception:
        logger.exception("dispatcher metrics not published", extra={"service_id": report.service_id})


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    # The wake-up queue's event source has BatchSize 1: one service per invocation, as for a tick.
    records = event.get("Records")
    bodies = [json.loads(record["body"]) for record in records] if isinstance(records, list) else [event]
    summaries = []
    for body in bodies:
        request = WakeRequest.model_validate(body)
        report = dispatch_service(request.service_id, deps_for(context, rt), request)
        publish_metrics(report)
        summary = {**report.summary(), "trigger": request.reason or "schedule"}
        logger.info("dispatcher invocation finished", extra=summary)
        summaries.append(summary)
    return summaries[0] if len(summaries) == 1 else {"invocations": summaries}
