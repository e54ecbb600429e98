"""What AWS does between the functions, done locally by polling the embedded AWS:

- `QueueTrigger`: an SQS event source mapping (from the template's `SQS` events): receives batches,
  invokes the function with them, deletes what succeeded (all but the reported `batchItemFailures`
  when the mapping says `ReportBatchItemFailures`), leaves the rest to reappear after the
  visibility timeout, as Lambda's poller does.
- `QueueTrigger`'s concurrency is the mapping's `ScalingConfig.MaximumConcurrency` (one batch at a
  time without it): the dispatcher's wake-up queue runs one long invocation per service at once.
- `ScheduleFirer`: EventBridge Scheduler. moto stores schedules but never fires them; this reads
  every ENABLED `rate(...)` schedule and invokes its target with its `Input` once per period, at a
  random second of each period as AWS does (60-second precision: two fires of a one-minute rate may
  be 1 s or 119 s apart), each fire on its own thread, so a long invocation overlaps the next one.
  The same for the `ScheduleV2` / `Schedule` events template functions declare (the health check),
  which AWS creates with the stack and the runner never sees in the embedded Scheduler; their
  period can be shortened for local runs (`template_period`). AWS starts those at the deploy, before
  anyone uses the stack; locally the stack and its use start together, so their first fire comes one
  period after the runner starts (a run is not checked before it could set itself up).
  A fire falls at a random second of the first minute of its period (of the period, when shorter):
  the 60-second precision EventBridge Scheduler keeps.
- `OutboxWriter`: writes every message SES accepted to `<outbox>/<n>-<message id>.eml`.

Polls never long-poll: the embedded server answers one request at a time, and a 20-second
ReceiveMessage would stall every other client."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from local_runner.functions import FunctionSpec, Invoke, function_for_arn
from local_runner.moto_server import EmbeddedAws
from local_runner.template import (
    LOCAL_REGION,
    CreatedResources,
    DeclaredSchedule,
    function_events,
    resolve_parameters,
)

log = logging.getLogger("local_runner")

_RATE = re.compile(r"rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
EML_SUFFIX = ".eml"
UNFIRED_RECHECK_SECONDS = 60.0  # how often a schedule the runner cannot fire is read again
PRECISION_SECONDS = 60.0  # EventBridge Scheduler fires within this much of each period's start
TEMPLATE_GROUP = "template"  # the key group of schedules declared in the template
SQS_RECEIVE_LIMIT = 10  # messages one ReceiveMessage may return
SCHEDULE_CONCURRENCY = 256  # fired invocations running at once (Lambda's own limit is the account's)


class PollingThread(ABC):
    """A daemon thread that calls `poll_once` every `interval` seconds until stopped."""

    name = "poller"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                busy = self.poll_once()
            except (BotoCoreError, ClientError, OSError) as error:
                if self._stopping.is_set():
                    return
                log.warning("%s: %s", self.name, error)
                busy = False
            except Exception:  # one bad poll must not end the thread: AWS keeps polling too
                log.exception("%s: poll failed", self.name)
                busy = False
            if not busy:
                self._stopping.wait(self.interval)

    @abstractmethod
    def poll_once(self) -> bool:
        """One round; True when there may be more to do at once."""


# ------------------------------------------------------------------ SQS -> Lambda


@dataclass(frozen=True)
class QueueMapping:
    function: str
    queue_url: str
    queue_arn: str
    batch_size: int
    reports_item_failures: bool
    concurrency: int = 1  # batches in flight at once


def _maximum_concurrency(template: dict[str, Any], props: dict[str, Any]) -> int:
    """The mapping's ScalingConfig.MaximumConcurrency (a number or a parameter's default); 1 when
    absent or conditional: handlers that keep per-module batch state then never share it."""
    value = (
        (props.get("ScalingConfig") or {}).get("MaximumConcurrency")
        if isinstance(props.get("ScalingConfig"), dict)
        else None
    )
    if isinstance(value, dict) and "Ref" in value:
        value = template.get("Parameters", {}).get(value["Ref"], {}).get("Default")
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 1


def queue_mappings(template: dict[str, Any], created: CreatedResources) -> list[QueueMapping]:
    return [
        QueueMapping(
            function=logical_id,
            queue_url=created.queue_urls[props["Queue"]["Fn::GetAtt"][0]],
            queue_arn=created.queue_arns[props["Queue"]["Fn::GetAtt"][0]],
            # Lambda's default for SQS is 10; a parameter's default when the template refers to one
            batch_size=int(resolve_parameters(props.get("BatchSize", 10), template) or 10),
            reports_item_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
            concurrency=_maximum_concurrency(template, props),
        )
        for logical_id, props in function_events(template, "SQS")
    ]


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event Lambda's SQS poller passes to the function."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message.get("Attributes", {}),
                "messageAttributes": {
                    name: _lambda_message_attribute(value)
                    for name, value in message.get("MessageAttributes", {}).items()
                },
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": LOCAL_REGION,
            }
            for message in messages
        ]
    }


def _lambda_message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    """SQS's `StringValue` / `BinaryValue` / `DataType` are camel-cased in Lambda's event."""
    return {
        "stringValue": value.get("StringValue"),
        "binaryValue": value.get("BinaryValue"),
        "stringListValues": value.get("StringListValues", []),
        "binaryListValues": value.get("BinaryListValues", []),
        "dataType": value.get("DataType"),
    }


def _failed_message_ids(result: Any, messages: list[dict[str, Any]]) -> set[str]:
    """The messages a ReportBatchItemFailures reply names; a reply Lambda cannot read fails the
    whole batch, as it does in AWS."""
    every = {message["MessageId"] for message in messages}
    if result is None:
        return set()
    if not isinstance(result, dict) or not isinstance(result.get("batchItemFailures", []), list):
        return every
    failed: set[str] = set()
    for item in result.get("batchItemFailures", []):
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(identifier, str) or identifier not in every:
            return every
        failed.add(identifier)
    return failed


class QueueTrigger(PollingThread):
    """Up to `mapping.concurrency` batches at once (each on its own thread when above one); with one,
    batches run on the polling thread, one after the other."""

    def __init__(self, sqs: Any, mapping: QueueMapping, invoke: Invoke, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.name = f"sqs->{mapping.function}"
        self._sqs = sqs
        self._mapping = mapping
        self._invoke = invoke
        self._workers = WarmThreads(self.name, mapping.concurrency)

    def poll_once(self) -> bool:
        mapping = self._mapping
        if self._workers.busy >= mapping.concurrency:
            return False
        received = self._sqs.receive_message(
            QueueUrl=mapping.queue_url,
            # SQS hands out at most 10 per receive; Lambda's poller gathers larger batches over its
            # batching window, locally a batch is what one receive gives
            MaxNumberOfMessages=min(mapping.batch_size, SQS_RECEIVE_LIMIT),
            WaitTimeSeconds=0,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = received.get("Messages", [])
        if not messages:
            return False
        if mapping.concurrency <= 1:
            self._process(messages)
            return True
        self._workers.submit(lambda: self._process_on_worker(messages))
        return True

    def _process_on_worker(self, messages: list[dict[str, Any]]) -> None:
        try:
            self._process(messages)
        except (BotoCoreError, ClientError) as error:  # the messages reappear after their visibility timeout
            log.warning("%s: %s", self.name, error)

    def _process(self, messages: list[dict[str, Any]]) -> None:
        mapping = self._mapping
        try:
            result = self._invoke(mapping.function, sqs_event(messages, mapping.queue_arn))
        except Exception:
            return  # the whole batch reappears after the visibility timeout
        failed = _failed_message_ids(result, messages) if mapping.reports_item_failures else set()
        done = [message for message in messages if message["MessageId"] not in failed]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=mapping.queue_url,
                Entries=[{"Id": str(index), "ReceiptHandle": m["ReceiptHandle"]} for index, m in enumerate(done)],
            )

    def wait_for_invocations(self, timeout: float) -> bool:
        """Waits for batches still running on worker threads; True when none is left."""
        return self._workers.wait(timeout)


class WarmThreads:
    """Daemon threads reused from one invocation to the next, as Lambda reuses a warm execution
    environment: per-thread state (PynamoDB's botocore sessions) is built once per thread, not once
    per invocation. At most `most` run at once; more jobs wait. Daemon threads: stopping the runner
    never waits for a long invocation (it is cut off, as at a Lambda timeout)."""

    def __init__(self, name: str, most: int) -> None:
        self._name = name
        self._most = max(1, most)
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Condition()
        self._threads = 0
        self._idle = 0  # threads waiting for a job and not yet promised one
        self._busy = 0  # jobs submitted and not finished

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._busy += 1
            if self._idle > 0:
                self._idle -= 1  # promised this job: the next submit does not count on it
            elif self._threads < self._most:
                self._threads += 1
                name = f"{self._name}-{self._threads}"
                threading.Thread(target=self._work, args=(job,), name=name, daemon=True).start()
                return
        self._jobs.put(job)

    def _work(self, first: Callable[[], None]) -> None:
        job = first
        while True:
            try:
                # A failed invocation must not end the thread; the function host has logged it.
                with contextlib.suppress(Exception):
                    job()
            finally:
                with self._lock:
                    self._busy -= 1
                    self._idle += 1
                    self._lock.notify_all()
            job = self._jobs.get()

    def wait(self, timeout: float) -> bool:
        """Waits until no job is running or waiting; True when none is left."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True


# ------------------------------------------------------------------ EventBridge Scheduler -> Lambda


def rate_seconds(expression: str) -> float | None:
    """Seconds between fires of a `rate(...)` expression; None for cron/at (not fired locally)."""
    found = _RATE.fullmatch(expression.strip())
    if found is None:
        return None
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2).rstrip("s")]


def random_second(period: float) -> float:
    """Where in its period a schedule fires: anywhere, as EventBridge Scheduler's 60-second
    precision allows."""
    return random.uniform(0.0, period)


class ScheduleFirer(PollingThread):
    """Fires each ENABLED rate schedule once in every period counted from when it was first seen
    enabled, at the offset `offset(span)` gives in that period's first `span` seconds (a random
    second of its first minute by default): those of the embedded Scheduler, and those the template
    declares on its functions (`declared`: from one period after the runner starts, every
    `template_period` seconds when given)."""

    name = "scheduler"

    def __init__(
        self,
        scheduler: Any,
        functions: dict[str, FunctionSpec],
        invoke: Invoke,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        offset: Callable[[float], float] = random_second,
        declared: Sequence[DeclaredSchedule] = (),
        template_period: float | None = None,
    ) -> None:
        super().__init__(interval)
        self._scheduler = scheduler
        self._functions = functions
        self._invoke = invoke
        self._clock = clock
        self._offset = offset
        self._next_fire: dict[tuple[str, str], float] = {}
        self._window: dict[tuple[str, str], float] = {}  # start of the period the next fire falls in
        self._warned: set[tuple[str, str]] = set()
        self._declared = self._fireable(declared, template_period)
        # Overlapping fires each get a thread (a long invocation overlaps the next fire, as in AWS).
        self._workers = WarmThreads(self.name, SCHEDULE_CONCURRENCY)
        self.fired = 0

    def _fireable(
        self, declared: Sequence[DeclaredSchedule], template_period: float | None
    ) -> list[tuple[DeclaredSchedule, float]]:
        """The declared schedules the runner fires, each with its period."""
        fireable = []
        for schedule in declared:
            period = rate_seconds(schedule.expression or "")
            if not schedule.enabled or schedule.function not in self._functions:
                continue
            if period is None:
                log.warning(
                    "schedule %s (%s) is not fired locally: only rate() schedules are",
                    schedule.name,
                    schedule.expression,
                )
                continue
            fireable.append((schedule, template_period if template_period else period))
        return fireable

    def poll_once(self) -> bool:
        pages = self._scheduler.get_paginator("list_schedules").paginate(State="ENABLED")
        enabled = [summary for page in pages for summary in page.get("Schedules", [])]
        seen = set()
        now = self._clock()
        for summary in enabled:
            key = (summary.get("GroupName", "default"), summary["Name"])
            seen.add(key)
            self._window.setdefault(key, now)  # first seen enabled: its first period starts now
            due = self._next_fire.get(key)
            if due is not None and due > now:
                continue
            try:
                self._fire_if_possible(key, due, now)
            except (BotoCoreError, ClientError):
                raise  # the embedded AWS did not answer: this poll ends (the thread logs it)
            except Exception:  # a schedule the runner cannot read (bad Input, ...) skips its turn
                log.exception("schedule %s/%s could not be fired", *key)
                self._next_fire[key] = now + UNFIRED_RECHECK_SECONDS
        for schedule, period in self._declared:
            key = (TEMPLATE_GROUP, schedule.name)
            seen.add(key)
            self._window.setdefault(key, now + period)  # the stack's: one period after the runner starts
            due = self._next_fire.get(key)
            if (due is not None and due > now) or self._first_fire_later(key, due, now, period):
                continue
            self._next_period(key, now, period)
            self._fire(schedule.function, schedule.name, schedule.event)
        # A schedule disabled (or deleted) and enabled again starts a new period, like a new one.
        for key in set(self._window) - seen:
            self._window.pop(key, None)
            self._next_fire.pop(key, None)
        return False

    def _fire_if_possible(self, key: tuple[str, str], due: float | None, now: float) -> None:
        schedule = self._scheduler.get_schedule(GroupName=key[0], Name=key[1])
        period = rate_seconds(schedule["ScheduleExpression"])
        target = function_for_arn(self._functions, schedule["Target"]["Arn"])
        if period is None or target is None:
            if key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "schedule %s/%s (%s -> %s) is not fired locally: only rate() schedules that "
                    "target a template function are",
                    *key,
                    schedule["ScheduleExpression"],
                    schedule["Target"]["Arn"],
                )
            self._next_fire[key] = now + UNFIRED_RECHECK_SECONDS  # not re-read every poll
            return
        if self._first_fire_later(key, due, now, period):
            return
        event = json.loads(schedule["Target"].get("Input") or "{}")
        self._next_period(key, now, period)
        self._fire(target.logical_id, schedule["Name"], event)

    def _first_fire_later(self, key: tuple[str, str], due: float | None, now: float, period: float) -> bool:
        """On the first look its fire falls somewhere in the current period: True while that is ahead."""
        if due is not None:
            return False
        self._next_fire[key] = self._window[key] + self._offset(min(period, PRECISION_SECONDS))
        return self._next_fire[key] > now

    def _next_period(self, key: tuple[str, str], now: float, period: float) -> None:
        """Periods follow each other from the first, so fires do not drift; after a long stall the
        next period starts now (no burst of missed fires)."""
        window = self._window[key] + period
        self._window[key] = window if window + period > now else now
        self._next_fire[key] = self._window[key] + self._offset(min(period, PRECISION_SECONDS))

    def _fire(self, function: str, name: str, event: dict[str, Any]) -> None:
        self.fired += 1
        log.info("schedule %s fired -> %s %s", name, function, json.dumps(event))
        # A failed tick waits for the next fire (the function host has logged it).
        self._workers.submit(lambda: self._invoke(function, event))

    def wait_for_invocations(self, timeout: float) -> bool:
        """Waits for fired invocations still running; True when none is left."""
        return self._workers.wait(timeout)


# ------------------------------------------------------------------ SES -> outbox/


class OutboxWriter(PollingThread):
    """Copies every message SES accepted into the outbox as an .eml file, in send order. A file
    appears whole (written aside, then renamed) and the count moves on only once it is there, so
    a failed write (the folder deleted meanwhile) is retried, not lost."""

    name = "outbox"

    def __init__(self, aws: EmbeddedAws, outbox: Path, interval: float = 0.5) -> None:
        super().__init__(interval)
        self.outbox = outbox
        self._aws = aws
        self.written = 0

    def poll_once(self) -> bool:
        messages = self._aws.sent_raw_messages(start=self.written)
        if messages:
            self.outbox.mkdir(parents=True, exist_ok=True)
        for message in messages:
            safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", message.message_id)
            path = self.outbox / f"{self.written + 1:06d}-{safe_id}{EML_SUFFIX}"
            partial = path.with_suffix(".part")
            partial.write_bytes(message.raw_data.encode("utf-8", errors="surrogateescape"))
            partial.replace(path)
            self.written += 1
        return False


def clear_outbox(outbox: Path) -> int:
    """Removes the .eml files a previous run wrote (and nothing else); returns how many."""
    removed = 0
    for path in outbox.glob(f"[0-9][0-9][0-9][0-9][0-9][0-9]-*{EML_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed
