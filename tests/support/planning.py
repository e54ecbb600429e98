"""Helpers to seed tables directly and to drive the planner Lambda through its SQS queue."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3

from core.settings import Settings
from core.states import TaskStatus
from core.storage.ids import contact_id_for, new_id
from core.storage.models import ContactModel, EmailServiceModel, SubtaskModel, TaskModel, UserModel


def seed_user(user_id: str, quota: int, service_ids: list[str], now: float) -> UserModel:
    user = UserModel(
        user_id,
        email=f"{user_id}@example.com",
        quota=quota,
        remaining_quota=quota,
        service_ids=service_ids,
        created_at=now,
    )
    user.save()
    return user


def seed_service(
    service_id: str,
    now: float,
    *,
    sending_rate: float = 1.0,
    daily_quota: int = 100_000,
    healthy: bool = True,
    enabled: bool = True,
) -> EmailServiceModel:
    service = EmailServiceModel(
        service_id,
        name=service_id,
        region="us-east-1",
        sending_rate=sending_rate,
        daily_quota=daily_quota,
        enabled=enabled,
        is_healthy=healthy,
        created_at=now,
    )
    service.save()
    return service


def seed_contacts(
    user_id: str, count: int, now: float, *, tags: list[str], start: int = 0, status: str = "subscribed"
) -> list[str]:
    ids = []
    with ContactModel.batch_write() as batch:
        for number in range(start, start + count):
            email = f"person{number}@example.org"
            contact_id = contact_id_for(email)
            ids.append(contact_id)
            batch.save(
                ContactModel(
                    user_id,
                    contact_id,
                    email=email,
                    name=f"Person {number}",
                    tags=tags,
                    attributes={"number": number},
                    status=status,
                    created_at=now,
                    updated_at=now,
                )
            )
    return ids


def seed_addresses(
    user_id: str, addresses: list[str], now: float, *, tag: str = "list", timezones: dict[str, str] | None = None
) -> list[str]:
    """Contacts with these exact addresses (and, for some, a time zone), all tagged `tag`."""
    ids = []
    with ContactModel.batch_write() as batch:
        for number, email in enumerate(addresses):
            ids.append(contact_id_for(email))
            batch.save(
                ContactModel(
                    user_id,
                    ids[-1],
                    email=email,
                    name=f"Person {number}",
                    tags=[tag],
                    attributes={"number": number},
                    timezone=(timezones or {}).get(email),
                    status="subscribed",
                    created_at=now,
                    updated_at=now,
                )
            )
    return ids


def seed_task(
    user_id: str,
    now: float,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    contacts: list[str] | None = None,
    templates: list[str] | None = None,
    scheduled_at: float | None = None,
) -> TaskModel:
    task = TaskModel(
        new_id("task"),
        user_id=user_id,
        name="campaign",
        sender_id="snd_1",
        template_ids=templates or ["tpl_1"],
        contact_ids=contacts or [],
        include_tags=include or [],
        exclude_tags=exclude or [],
        has_rule=include is not None,
        scheduled_at=scheduled_at,
        status=TaskStatus.PLANNING,
        created_at=now,
        updated_at=now,
    )
    task.save()
    return task


class BudgetContext:
    """A Lambda context whose remaining time allows `chunks` planner steps, then runs out."""

    function_name = "PlannerFunction"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:PlannerFunction"

    def __init__(self, margin_seconds: float, chunks: int | None = None, request_id: str = "req") -> None:
        self._margin = margin_seconds
        self._left = chunks
        self.aws_request_id = request_id

    def get_remaining_time_in_millis(self) -> int:
        if self._left is None:
            return int((self._margin + 600) * 1000)
        self._left -= 1
        return int((self._margin + (1 if self._left >= 0 else 0)) * 1000)


@dataclass
class PlannerDriver:
    """Delivers the planner queue's messages to the planner handler, as the SQS trigger would."""

    settings: Settings
    invocations: int = 0

    def __post_init__(self) -> None:
        self.sqs = boto3.client("sqs")

    def enqueue(self, task_id: str, job: str = "plan") -> None:
        body = json.dumps({"task_id": task_id, "job": job})
        self.sqs.send_message(QueueUrl=self.settings.planner_queue_url, MessageBody=body)

    def drain(
        self,
        *,
        chunks_per_invocation: int | None = None,
        page_size: int = 2000,
        max_invocations: int = 1000,
        must_settle: bool = True,
    ) -> int:
        """Invokes the planner once per queued message until the queue is empty; returns how many
        invocations it took. With must_settle=False, stops quietly after max_invocations."""
        import planner_handler

        runtime = planner_handler.runtime()
        runtime.settings = runtime.settings.model_copy(update={"planner_page_size": page_size})
        started = self.invocations
        while self.invocations - started < max_invocations:
            reply = self.sqs.receive_message(QueueUrl=self.settings.planner_queue_url, MaxNumberOfMessages=1)
            messages = reply.get("Messages", [])
            if not messages:
                return self.invocations - started
            message = messages[0]
            event = {"Records": [_sqs_record(message)]}
            context = BudgetContext(
                self.settings.planner_safety_margin_seconds, chunks_per_invocation, request_id=f"req-{self.invocations}"
            )
            result = planner_handler.lambda_handler(event, context)
            self.invocations += 1
            assert result == {"batchItemFailures": []}, result
            self.sqs.delete_message(QueueUrl=self.settings.planner_queue_url, ReceiptHandle=message["ReceiptHandle"])
        if must_settle:
            raise AssertionError("planner did not settle")
        return max_invocations


def _sqs_record(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:PlannerQueue",
        "awsRegion": "us-east-1",
    }


def subtasks_of(task_id: str) -> list[SubtaskModel]:
    return [s for s in SubtaskModel.scan() if s.task_id == task_id]
