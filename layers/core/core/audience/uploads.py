"""The uploads bucket as imports use it: where a tenant's CSV and its error report live, presigned
URLs for the browser (PUT the file, GET the report), and reads pinned to the object imported.

The S3 client is passed in (built by the handler with standard endpoint configuration)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

UPLOAD_PREFIX = "imports/"
REPORT_PREFIX = "reports/"
CSV_CONTENT_TYPE = "text/csv"
READ_BLOCK_BYTES = 1024 * 1024  # one ranged GetObject
_OBJECT_KEY = re.compile(r"imports/(?P<user_id>[A-Za-z0-9_.:@-]{1,128})/(?P<import_id>imp_[0-9a-f]{24})\.csv")


class UploadChanged(Exception):
    """The object is gone, or is no longer the one the import started on (uploaded again)."""


def object_key(user_id: str, import_id: str) -> str:
    return f"{UPLOAD_PREFIX}{user_id}/{import_id}.csv"


def import_of_key(key: str) -> tuple[str, str] | None:
    """(user id, import id) of an upload's key as S3 events give it (URL-encoded); None for any
    other key."""
    found = _OBJECT_KEY.fullmatch(unquote_plus(key))
    return (found["user_id"], found["import_id"]) if found else None


def report_key(user_id: str, import_id: str) -> str:
    return f"{REPORT_PREFIX}{user_id}/{import_id}/errors.csv"


def report_part_key(user_id: str, import_id: str, offset: int) -> str:
    """One chunk's row errors, named by the chunk's first byte: a chunk written again (after a
    crash) replaces its own part, and the parts sort in file order."""
    return f"{REPORT_PREFIX}{user_id}/{import_id}/parts/{offset:012d}.csv"


@dataclass(frozen=True)
class StoredUpload:
    size: int
    etag: str


@dataclass
class Uploads:
    s3: Any
    bucket: str

    def upload_url(self, key: str, seconds: int) -> str:
        url: str = self.s3.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": CSV_CONTENT_TYPE},
            ExpiresIn=seconds,
        )
        return url

    def download_url(self, key: str, seconds: int) -> str:
        url: str = self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds
        )
        return url

    def stored(self, key: str) -> StoredUpload | None:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return StoredUpload(size=int(head["ContentLength"]), etag=str(head["ETag"]))

    def blocks(self, key: str, etag: str, start: int, end: int) -> Iterator[bytes]:
        """The object's bytes from `start` to `end` (its size), one ranged GetObject a block, each
        read whole before the next, only while it is still the object whose ETag is `etag`. (A
        stream held open while the rows are written would also do in AWS; a single-threaded local
        S3 would serve nothing else until it is read to the end.)"""
        position = start
        while position < end:
            last = min(end, position + READ_BLOCK_BYTES) - 1
            try:
                reply = self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={position}-{last}", IfMatch=etag)
            except ClientError as error:
                if _code(error) in ("PreconditionFailed", "NoSuchKey", "404", "InvalidRange"):
                    raise UploadChanged("the file was replaced or deleted while it was being imported") from error
                raise
            body = reply["Body"]
            try:
                block = bytes(body.read())
            finally:
                body.close()
            if not block:
                raise UploadChanged("the file was replaced or deleted while it was being imported")
            position += len(block)
            yield block

    def put_text(self, key: str, text: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=text.encode(), ContentType=CSV_CONTENT_TYPE)

    def read_text(self, key: str) -> str:
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            return str(body.read().decode())
        finally:
            body.close()

    def keys_under(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects' maximum
            objects = [{"Key": key} for key in keys[start : start + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
