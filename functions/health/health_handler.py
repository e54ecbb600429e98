"""Health Lambda, on its EventBridge Scheduler schedule (`HealthCheckIntervalMinutes`): checks every
email service's SES account and sender identity, marks each healthy or unhealthy
(core.service_health), and publishes ServiceHealthy / UnhealthyServices (core.dispatch.metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from core.clock import Clock, SystemClock
from core.dispatch.metrics import health_metrics, publish
from core.dispatch.wakeups import WakeQueue
from core.service_health import HealthDeps, RegionalClients, check_all_services
from core.settings import Settings, load_settings
from core.storage.models import bind_tables

logger = Logger()


class HealthCheckIncomplete(RuntimeError):
    """Some services could not be checked (each is logged): the invocation fails, so the function's
    Errors alarm fires, after the others were checked and the metrics published."""


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    clients: RegionalClients
    wake: WakeQueue


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    settings = load_settings()
    bind_tables(settings)
    # A read that still fails after these is reported as a `check_failed` warning; the next check retries.
    config = Config(retries={"mode": "standard", "max_attempts": 3})
    return Runtime(
        settings=settings,
        clock=SystemClock(),
        # Each service is checked in its own region: one client per API and region, made on first use.
        clients=RegionalClients(lambda api, region: boto3.client(api, region_name=region, config=config)),
        wake=WakeQueue.from_settings(boto3.client("sqs", config=config), settings),
    )


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    run = check_all_services(HealthDeps(clock=rt.clock, clients=rt.clients, wake=rt.wake))
    publish(health_metrics({result.service_id: result.is_healthy for result in run.results}, len(run.unhealthy)))
    summary = run.summary()
    logger.info("health check finished", extra=summary)
    if run.errors:
        raise HealthCheckIncomplete(f"services not checked: {', '.join(run.errors)}")
    return summary
