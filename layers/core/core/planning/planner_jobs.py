"""Messages on the planner queue: plan a task, or sweep a cancelled one. One shape, validated."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class PlannerJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str
    job: Literal["plan", "cancel"] = "plan"


def enqueue(sqs: Any, queue_url: str, job: PlannerJob) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody=job.model_dump_json())
