"""Wake-ups: messages on the dispatch wake-up queue (an SQS queue the dispatcher consumes, declared
in template.yaml) that start a service's dispatcher at once instead of at its next schedule tick.

Sent when the scheduler starts, a task is resumed or becomes queued, and by a dispatcher near the
end of its time budget for its own successor. A wake-up for a service already sending is a cheap
no-op (core.dispatch.lease). Wake-ups only save time: the per-service schedule still fires every
minute, so a wake-up that is lost costs at most one tick of delay, and sending one never fails the
request that asked for it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field

from core.api.schemas import Identifier
from core.dispatch.tiers import TierTargets
from core.settings import Settings
from core.storage.models import EmailServiceModel

log = logging.getLogger(__name__)

SQS_BATCH_LIMIT = 10
SQS_MAX_DELAY_SECONDS = 900


class WakeReason(StrEnum):
    START = "start"
    RESUME = "resume"
    QUEUED = "queued"
    DUE = "due"  # a scheduled task's time came
    ENABLED = "enabled"  # its service was changed while enabled (e.g. enabled again)
    HANDOFF = "handoff"
    FAILOVER = "failover"  # another service's queued work moved to it
    DISABLED = "disabled"  # its service was disabled: its queued work fails over


class WakeRequest(BaseModel):
    """One dispatcher start: a schedule tick (`{"service_id"}`) or a wake-up message's body."""

    model_config = ConfigDict(extra="ignore")

    service_id: Identifier
    reason: WakeReason | None = None
    # Hand-off: the invocation whose lease this one takes over, and that invocation's deadline.
    predecessor: str | None = Field(default=None, max_length=200)
    handoff_at: float | None = None

    @property
    def is_wake_up(self) -> bool:
        return self.reason is not None


@dataclass(frozen=True)
class WakeQueue:
    """Sends wake-ups, each to the queue of its service's pace tier (core.dispatch.tiers); with no
    queue configured (a test without one) it sends nothing."""

    sqs: Any  # boto3 SQS client
    queue_url: str
    paced_queue_url: str = ""  # consumed by the paced dispatcher; empty: everything to queue_url

    @classmethod
    def from_settings(cls, sqs: Any, settings: Settings) -> WakeQueue:
        return cls(sqs, settings.dispatch_wake_queue_url, settings.paced_dispatch_wake_queue_url)

    def wake(self, service_ids: Iterable[str], reason: WakeReason, delay_seconds: float = 0) -> int:
        """Wakes each service (in order, once); returns how many wake-ups were sent."""
        unique = list(dict.fromkeys(service_ids))
        delay = int(min(max(delay_seconds, 0), SQS_MAX_DELAY_SECONDS))
        rates = self._rates(unique)
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for service_id in unique:
            body = WakeRequest(service_id=service_id, reason=reason).model_dump(mode="json", exclude_none=True)
            by_queue.setdefault(self._queue_for(rates.get(service_id)), []).append(body)
        return sum(self._send(url, bodies, delay) for url, bodies in by_queue.items())

    def successor(
        self, service_id: str, predecessor: str, handoff_at: float, sending_rate: float | None = None
    ) -> bool:
        """Starts the invocation that takes over `predecessor`'s lease at `handoff_at`."""
        body = WakeRequest(
            service_id=service_id, reason=WakeReason.HANDOFF, predecessor=predecessor, handoff_at=handoff_at
        ).model_dump(mode="json", exclude_none=True)
        return self._send(self._queue_for(sending_rate), [body], 0) == 1

    def _queue_for(self, sending_rate: float | None) -> str:
        return TierTargets(self.queue_url, self.paced_queue_url).for_rate(sending_rate)

    def _rates(self, service_ids: list[str]) -> dict[str, float]:
        """Each service's pace (one BatchGetItem), only when there is a paced queue to choose."""
        if not self.paced_queue_url or not self.queue_url or not service_ids:
            return {}
        services = EmailServiceModel.batch_get(service_ids, attributes_to_get=["service_id", "sending_rate"])
        return {service.service_id: float(service.sending_rate) for service in services}

    def _send(self, queue_url: str, bodies: list[dict[str, Any]], delay: int) -> int:
        if not queue_url or not bodies:
            return 0
        sent = 0
        for start in range(0, len(bodies), SQS_BATCH_LIMIT):
            chunk = bodies[start : start + SQS_BATCH_LIMIT]
            entries = [
                {"Id": str(index), "MessageBody": json.dumps(body), "DelaySeconds": delay}
                for index, body in enumerate(chunk)
            ]
            try:
                reply = self.sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            except (BotoCoreError, ClientError) as error:  # the schedule tick is the fallback
                log.warning("wake-up not sent (%s); the next schedule tick starts the dispatcher", error)
                continue
            sent += len(reply.get("Successful", []))
        return sent
