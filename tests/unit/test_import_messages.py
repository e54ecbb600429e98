"""The import queue's messages: S3 notifications of uploads and continuations become import jobs;
S3's test event, other keys, other events and unreadable bodies become none."""

from __future__ import annotations

import json

from core.audience.import_jobs import ImportJob, jobs_of_message
from core.audience.uploads import import_of_key, object_key

IMPORT_ID = "imp_0123456789abcdef01234567"


def s3_event(key: str, name: str = "ObjectCreated:Put") -> str:
    record = {"eventName": name, "s3": {"bucket": {"name": "b"}, "object": {"key": key, "size": 10, "eTag": "e"}}}
    return json.dumps({"Records": [record]})


def test_an_upload_notification_names_its_import_from_the_url_encoded_key() -> None:
    key = object_key("0b1c-user:1@x", IMPORT_ID).replace("/", "%2F").replace(":", "%3A").replace("@", "%40")
    assert jobs_of_message(s3_event(key)) == [ImportJob(user_id="0b1c-user:1@x", import_id=IMPORT_ID)]


def test_a_continuation_is_its_own_job() -> None:
    body = ImportJob(user_id="alice", import_id=IMPORT_ID).model_dump_json()
    assert jobs_of_message(body) == [ImportJob(user_id="alice", import_id=IMPORT_ID)]


def test_anything_else_asks_for_nothing() -> None:
    test_event = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})
    for body in (
        test_event,
        s3_event("reports/alice/imp_0123456789abcdef01234567/errors.csv"),
        s3_event(f"imports/alice/{IMPORT_ID}.csv", name="ObjectRemoved:Delete"),
        s3_event("imports/alice/../bob/imp_0123456789abcdef01234567.csv"),
        "not json",
        "[1, 2]",
        json.dumps({"import_id": 5}),
    ):
        assert jobs_of_message(body) == [], body


def test_keys_round_trip() -> None:
    assert import_of_key(object_key("alice", IMPORT_ID)) == ("alice", IMPORT_ID)
    assert import_of_key(f"imports/alice/{IMPORT_ID}.csv.bak") is None
