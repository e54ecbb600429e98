"""SES events Lambda: an SQS batch of SES event notifications (SNS or EventBridge envelope) -> each
applied to its email's subtask, task counters, contact and suppression list exactly once
(core.deliverability.event_effects); then the batch's counted outcomes feed the reputation counters
and guard. A malformed or unknown event is logged and dropped; a DynamoDB failure, or an event whose
subtask is not recorded yet, fails only its own message (partial batch response), which SQS delivers
again."""

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
from botocore.exceptions import BotoCoreError, ClientError

from core.clock import Clock, SystemClock
from core.deliverability.event_effects import (
    BatchOutcomes,
    EventPorts,
    Result,
    SubtaskNotFoundYet,
    apply_events,
)
from core.deliverability.event_ports import event_ports
from core.deliverability.ses_events import MalformedEvent, SesEvent, parse
from core.settings import Settings, load_settings
from core.storage.models import bind_tables
from core.suppressions import AccountSuppressionList

logger = Logger()

RETRY_DELAY_CAP_SECONDS = 300


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    sqs: Any
    ports: EventPorts


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    settings = load_settings()
    bind_tables(settings)
    config = Config(retries={"mode": "standard", "max_attempts": 3})
    # Bounced and complained addresses also go on SES's account-level list of this region (the
    # operator's choice: SesAccountSuppressionMirror).
    account_list = AccountSuppressionList.from_settings(
        lambda: boto3.client("sesv2", config=config), settings.ses_account_suppression_mirror
    )
    return Runtime(
        settings=settings,
        clock=SystemClock(),
        sqs=boto3.client("sqs", config=config),
        ports=event_ports(settings, account_list),
    )


def _retry_sooner(rt: Runtime, record: SQSRecord, receive_count: int) -> None:
    """The message comes back after 2, 4, 8 ... s (capped) instead of the whole visibility timeout."""
    if not rt.settings.ses_events_queue_url:
        return
    try:
        rt.sqs.change_message_visibility(
            QueueUrl=rt.settings.ses_events_queue_url,
            ReceiptHandle=record.receipt_handle,
            VisibilityTimeout=min(RETRY_DELAY_CAP_SECONDS, 2**receive_count),
        )
    except (BotoCoreError, ClientError) as error:  # then it comes back after the visibility timeout
        logger.warning("could not shorten the retry delay", extra={"error": str(error)})


def _parsed(record: SQSRecord) -> SesEvent | MalformedEvent:
    try:
        return parse(record.body)
    except MalformedEvent as error:
        return error


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    records = [SQSRecord(raw) for raw in event.get("Records", [])]
    parsed = {record.message_id: _parsed(record) for record in records}
    receive_counts = {record.message_id: int(record.attributes.approximate_receive_count or 1) for record in records}
    # The whole batch at once: each task's counters move once for all its events here.
    applied = apply_events(
        [
            (message_id, ses_event, receive_counts[message_id])
            for message_id, ses_event in parsed.items()
            if isinstance(ses_event, SesEvent)
        ],
        rt.clock.now(),
        rt.ports,
    )
    batch = BatchOutcomes()

    def handle(record: SQSRecord) -> str:
        ses_event = parsed[record.message_id]
        result = applied.get(record.message_id)
        if isinstance(ses_event, MalformedEvent) or isinstance(result, MalformedEvent):
            reason = str(ses_event if isinstance(ses_event, MalformedEvent) else result)
            logger.warning("SES event dropped: malformed", extra={"reason": reason, "sqs_id": record.message_id})
            return "malformed"
        if isinstance(result, SubtaskNotFoundYet):
            logger.info("SES event before its subtask: retried", extra={"message_id": ses_event.mail.message_id})
            _retry_sooner(rt, record, receive_counts[record.message_id])
            raise result
        if isinstance(result, BaseException):
            raise result  # logged by the batch processor; SQS delivers it again
        assert result is not None
        if result.result in (Result.IGNORED, Result.UNMATCHED):
            logger.info(
                f"SES event {result.result.value}",
                extra={"event_type": ses_event.event_type, "message_id": ses_event.mail.message_id},
            )
        batch.add(result)
        return result.result.value

    # One processor per invocation: it holds the batch's state, and batches may run side by side in
    # one process (the local runner). A batch whose every event waits for its subtask is not an
    # error (no Errors alarm): its messages are reported failed and come back, like any partial failure.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    response = process_partial_response(event=event, record_handler=handle, processor=processor, context=context)
    batch.finish(rt.ports, rt.clock.now())
    return dict(response)
