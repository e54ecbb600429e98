"""The SES sender: one SES v2 `SendEmail` per email, and the in-flight pool that keeps the pace when
SES answers slower than the interval.

A call is made at its paced instant; with a 50 ms reply and a 10 ms interval five calls must be in
flight at once, so calls run on a small thread pool sized by the latency seen (an EWMA) over the
interval, never more than `max_in_flight`. At slow paces (one call at a time) no thread is used.
The loop settles completed calls in the order they were made (`Completed`), so records and counters
follow send order."""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.storage.models import SubtaskModel

INITIAL_LATENCY_SECONDS = 0.05


@dataclass(frozen=True)
class Completed:
    """A call to settle: its subtask, its reply (a message id) or error, and its paced instant."""

    subtask: SubtaskModel
    reply: Future[str]
    sent_at: float


# SES message tags: names and values of ASCII letters, digits, `_` and `-`, at most 256 characters.
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
TAG_LIMIT = 256


def email_tag(name: str, value: str) -> dict[str, str]:
    """A tag SES accepts: any other character becomes `_` (an id with one is still told apart by
    the subtask the event's message id finds; tags are for attribution in SES's own reports)."""
    return {"Name": name, "Value": _TAG_UNSAFE.sub("_", value)[:TAG_LIMIT] or "_"}


def ses_request(
    sender_email: str, recipient: str, raw: bytes, configuration_set: str | None, tags: list[dict[str, str]]
) -> dict[str, Any]:
    """An SES v2 SendEmail request for one raw MIME message (campaign emails and test sends)."""
    request: dict[str, Any] = {
        "FromEmailAddress": sender_email,
        "Destination": {"ToAddresses": [recipient]},
        "Content": {"Raw": {"Data": raw}},
        "EmailTags": tags,
    }
    if configuration_set:
        request["ConfigurationSetName"] = configuration_set
    return request


def send_request(sender_email: str, subtask: SubtaskModel, raw: bytes, configuration_set: str | None) -> dict[str, Any]:
    """A campaign email's request: the user, task and service ids as tags, which SES events carry
    back (`mail.tags`), so an event is attributed even before its subtask is found."""
    ids = (("task_id", subtask.task_id), ("user_id", subtask.user_id), ("service_id", subtask.service_id))
    tags = [email_tag(name, value) for name, value in ids if value]
    return ses_request(sender_email, subtask.email, raw, configuration_set, tags)


@dataclass
class SesSender:
    ses: Any  # boto3 sesv2 client (no botocore retries: a resend could deliver twice)
    max_in_flight: int
    latency: float = INITIAL_LATENCY_SECONDS  # seconds per SES call, smoothed
    in_flight: deque[tuple[Completed, float]] = field(default_factory=deque)  # with its monotonic start
    pool: ThreadPoolExecutor | None = None

    def _call(self, request: dict[str, Any]) -> str:
        return str(self.ses.send_email(**request)["MessageId"])

    def _observe(self, seconds: float) -> None:
        self.latency = 0.8 * self.latency + 0.2 * seconds

    def submit(
        self, subtask: SubtaskModel, request: dict[str, Any], sent_at: float, interval: float
    ) -> list[Completed]:
        """Makes the call; returns the calls that must be settled now, oldest first (this one at
        once when calls run one at a time)."""
        allowed = min(self.max_in_flight, max(1, math.ceil(self.latency / max(interval, 1e-6))))
        started = time.monotonic()
        if allowed <= 1 and not self.in_flight:
            reply: Future[str] = Future()
            try:
                reply.set_result(self._call(request))
            except (ClientError, BotoCoreError) as error:  # anything else is a bug: it propagates
                reply.set_exception(error)
            self._observe(time.monotonic() - started)
            return [Completed(subtask, reply, sent_at)]
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="ses")
        self.in_flight.append((Completed(subtask, self.pool.submit(self._call, request), sent_at), started))
        due = []
        while len(self.in_flight) >= allowed:
            due.append(self._wait_oldest())
        return due

    def _wait_oldest(self) -> Completed:
        completed, started = self.in_flight.popleft()
        completed.reply.exception()  # waits for the reply
        self._observe(time.monotonic() - started)
        return completed

    def drain(self) -> Iterator[Completed]:
        """Every call still in flight, oldest first, as each completes."""
        while self.in_flight:
            yield self._wait_oldest()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
