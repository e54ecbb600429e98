"""The import queue's messages: S3's ObjectCreated notifications of uploads, and the import
function's own continuations (`{"user_id", "import_id"}`) when a file outlasts one invocation."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from core.audience.uploads import import_of_key


class ImportJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str
    import_id: str


def jobs_of_message(body: str) -> list[ImportJob]:
    """The imports a message asks for: one per S3 record naming an upload's key, or the
    continuation itself. S3's test event (sent when the notification is configured), other keys and
    anything unreadable ask for none (there is nothing to retry)."""
    try:
        message: Any = json.loads(body)
    except ValueError:
        return []
    if not isinstance(message, dict):
        return []
    if "import_id" in message:
        try:
            return [ImportJob.model_validate(message)]
        except ValueError:
            return []
    jobs: list[ImportJob] = []
    for record in message.get("Records") or []:
        key = ((record or {}).get("s3") or {}).get("object", {}).get("key") if isinstance(record, dict) else None
        found = import_of_key(key) if isinstance(key, str) else None
        if found is not None and str(record.get("eventName", "")).startswith("ObjectCreated"):
            jobs.append(ImportJob(user_id=found[0], import_id=found[1]))
    return jobs


def enqueue(sqs: Any, queue_url: str, job: ImportJob) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody=job.model_dump_json())
