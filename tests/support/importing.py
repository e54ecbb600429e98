"""Drives bulk imports in-process: an import created through the API, the CSV put where its
presigned URL points, and the import function run on what S3 put on its queue."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3

from core.audience.import_jobs import ImportJob
from core.audience.imports import ImportDeps, ImportOutcome, run_import
from core.audience.uploads import Uploads
from tests.conftest import ApiClient, FakeClock


@dataclass
class ImportContext:
    """What the import function's handler reads of Lambda's context; time left is set by the test."""

    seconds: float = 900.0
    function_name: str = "ImportFunction"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ImportFunction"
    aws_request_id: str = "test-import"

    def get_remaining_time_in_millis(self) -> int:
        return int(self.seconds * 1000)


def key_of_url(url: str) -> str:
    """The object key a presigned URL names: virtual-hosted (AWS's own endpoint: the bucket in the
    host name) or path-style (a local endpoint: the bucket first in the path)."""
    parts = urlsplit(url)
    path = parts.path.lstrip("/")
    virtual = (parts.hostname or "").split(".")[0] != "127" and ".s3." in f".{parts.hostname}"
    return unquote(path if virtual else path.split("/", 1)[1])


@dataclass
class Importer:
    api: ApiClient
    clock: FakeClock
    bucket: str
    queue_url: str
    chunk_rows: int = 1000
    s3: Any = field(default_factory=lambda: boto3.client("s3"))
    sqs: Any = field(default_factory=lambda: boto3.client("sqs"))

    def create(self, user: str, body: Any = None) -> dict[str, Any]:
        reply = self.api.post("/api/imports", body, user=user)
        assert reply.status == 201, reply.body
        return dict(reply.body)

    def upload(self, created: dict[str, Any], data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.s3.put_object(Bucket=self.bucket, Key=key_of_url(created["upload_url"]), Body=raw, ContentType="text/csv")

    def status(self, user: str, import_id: str) -> dict[str, Any]:
        reply = self.api.get(f"/api/imports/{import_id}", user=user)
        assert reply.status == 200, reply.body
        return dict(reply.body)

    def deps(self, seconds_left: float = 1e9) -> ImportDeps:
        return ImportDeps(
            clock=self.clock,
            uploads=Uploads(self.s3, self.bucket),
            seconds_left=lambda: seconds_left,
            chunk_rows=self.chunk_rows,
        )

    def run(self, user: str, import_id: str, seconds_left: float = 1e9) -> ImportOutcome:
        return run_import(ImportJob(user_id=user, import_id=import_id), self.deps(seconds_left))

    def messages(self) -> list[dict[str, Any]]:
        """What waits on the import queue (received and deleted), S3 test events left out."""
        taken: list[dict[str, Any]] = []
        while batch := self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages"):
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(batch)],
            )
            taken.extend(m for m in batch if json.loads(m["Body"]).get("Event") != "s3:TestEvent")
        return taken

    def report(self, url: str) -> str:
        body = self.s3.get_object(Bucket=self.bucket, Key=key_of_url(url))["Body"].read()
        return str(body.decode())
