"""Import Lambda: SQS messages (S3 ObjectCreated notifications of uploads, and continuations) ->
each import run as far as time allows, then a continuation enqueued. A failed record is retried
by SQS (partial batch response); the import resumes from its last committed chunk."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from core.audience.import_jobs import enqueue, jobs_of_message
from core.audience.imports import ImportDeps, ImportOutcome, run_import
from core.audience.uploads import Uploads
from core.clock import Clock, SystemClock
from core.settings import Settings, load_settings
from core.storage.models import bind_tables

logger = Logger()
processor = BatchProcessor(event_type=EventType.SQS)


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    s3: Any
    sqs: Any


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    settings = load_settings()
    bind_tables(settings)
    config = Config(retries={"mode": "standard", "max_attempts": 5})
    return Runtime(
        settings=settings,
        clock=SystemClock(),
        s3=boto3.client("s3", config=config.merge(Config(signature_version="s3v4"))),
        sqs=boto3.client("sqs", config=config),
    )


def handle_message(body: str, context: LambdaContext) -> list[str]:
    rt = runtime()
    margin = rt.settings.import_safety_margin_seconds
    deps = ImportDeps(
        clock=rt.clock,
        uploads=Uploads(rt.s3, rt.settings.import_bucket),
        seconds_left=lambda: context.get_remaining_time_in_millis() / 1000 - margin,
        chunk_rows=rt.settings.import_chunk_rows,
    )
    outcomes = []
    for job in jobs_of_message(body):
        outcome = run_import(job, deps)
        logger.info("import run", extra={"user_id": job.user_id, "import_id": job.import_id, "outcome": outcome})
        if outcome is ImportOutcome.CONTINUE:
            enqueue(rt.sqs, rt.settings.import_queue_url, job)
        outcomes.append(outcome.value)
    return outcomes


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    def handle(record: SQSRecord) -> list[str]:
        return handle_message(record.body, context)

    return process_partial_response(event=event, record_handler=handle, processor=processor, context=context)
