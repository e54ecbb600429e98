"""Bulk CSV imports (core.audience.imports, functions/imports, /api/imports) on in-process moto:
an upload's S3 event runs the import function, good rows are imported and every bad one reported,
the same file uploaded again writes nothing, a crash mid-import resumes without duplicates or
loss, suppressed addresses stay suppressed, rows of one address are merged, file-level problems
fail the import with nothing written, and the routes' 4xx."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

import core.audience.imports as imports_module
from core.audience import csv_rows
from core.audience.imports import ImportOutcome
from core.settings import Settings, load_settings
from core.states import ContactStatus
from core.storage.ids import contact_id_for
from core.storage.models import ContactModel, ImportModel, SuppressionModel
from tests.conftest import ApiClient, FakeClock
from tests.integration.given import assert_rejected, given_contacts, given_user
from tests.support.importing import ImportContext, Importer


@pytest.fixture
def importer(api: ApiClient, aws: Settings, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Importer]:
    given_user(api, "alice")
    given_user(api, "bob")
    queue_url = boto3.client("sqs").get_queue_url(QueueName="ImportQueue")["QueueUrl"]
    monkeypatch.setenv("IMPORT_QUEUE_URL", queue_url)
    load_settings.cache_clear()
    importer = Importer(api, clock, bucket=aws.import_bucket or "importuploadsbucket", queue_url=queue_url)
    importer.messages()  # S3's test event, sent when the notification was configured
    yield importer
    load_settings.cache_clear()


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def people(count: int, start: int = 0) -> list[list[Any]]:
    return [
        [f"person{n}@example.org", f"Person {n}", "newsletter;list" + str(n % 3), "Europe/Paris", f"C{n}"]
        for n in range(start, start + count)
    ]


HEADER = ["email", "name", "tags", "timezone", "first_name"]


def contacts_of(user: str) -> dict[str, ContactModel]:
    return {contact.email.lower(): contact for contact in ContactModel.query(user)}


def imported(importer: Importer, user: str, text: str | bytes, **body: Any) -> dict[str, Any]:
    created = importer.create(user, body or None)
    importer.upload(created, text)
    assert importer.run(user, created["import_id"]) is ImportOutcome.DONE
    return importer.status(user, created["import_id"])


def test_an_upload_notifies_the_import_function_which_imports_every_row(importer: Importer) -> None:
    # Given an import created through the API, and the CSV put where its URL points
    created = importer.create("alice", {"filename": "spring list.csv"})
    assert created["method"] == "PUT" and created["headers"] == {"Content-Type": "text/csv"}
    assert f"imports/alice/{created['import_id']}.csv" in created["upload_url"]
    assert importer.status("alice", created["import_id"])["status"] == "pending_upload"
    importer.upload(created, csv_text(HEADER, people(25)))

    # When the import function gets what S3 put on its queue
    import imports_handler

    imports_handler.runtime.cache_clear()
    messages = importer.messages()
    assert len(messages) == 1
    event = {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {},
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ImportQueue",
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }
    result = imports_handler.lambda_handler(event, ImportContext())

    # Then every row is a contact, and the import says so
    assert result == {"batchItemFailures": []}
    status = importer.status("alice", created["import_id"])
    assert status["status"] == "completed", status
    counts = (status["rows_total"], status["rows_done"], status["rows_imported"], status["rows_failed"])
    assert counts == (25, 25, 25, 0)
    assert status["bytes_done"] == status["bytes_total"] > 0
    assert status["filename"] == "spring list.csv" and status["errors"] == [] and status["error_report_url"] is None
    contacts = contacts_of("alice")
    assert len(contacts) == 25
    seven = contacts["person7@example.org"]
    assert (seven.name, list(seven.tags), seven.timezone, seven.status) == (
        "Person 7",
        ["newsletter", "list1"],
        "Europe/Paris",
        "subscribed",
    )
    assert dict(seven.attributes.as_dict() if hasattr(seven.attributes, "as_dict") else seven.attributes) == {
        "first_name": "C7"
    }
    assert contacts_of("bob") == {}


def test_bad_rows_are_reported_each_with_line_column_and_reason_and_the_good_ones_imported(
    importer: Importer,
) -> None:
    # Given a file whose rows 3, 5, 6 and 8 (lines) are bad in different ways
    rows = [
        ["ann@example.org", "Ann", "vip", "", ""],
        ["not-an-address", "Bad", "", "", ""],  # line 3
        ["bo@example.org", "Bo", "", "", ""],
        ["cy@example.org", "Cy", "has space", "", ""],  # line 5: a tag
        ["di@example.org", "Di", "", "Mars/Olympus", ""],  # line 6: a time zone
        ["ed@example.org", "Ed", "", "", ""],
        ["", "Nobody", "", "", ""],  # line 8: no email
        ["fa@example.org", "Fa", "", "", "", "extra"],  # line 9: a cell the header does not name
    ]
    # When it is imported (two rows a chunk: errors from several chunks)
    importer.chunk_rows = 2
    status = imported(importer, "alice", csv_text(HEADER, rows))

    # Then the good rows are contacts and every bad one is reported where it is
    assert status["status"] == "completed", status
    assert (status["rows_done"], status["rows_imported"], status["rows_failed"]) == (8, 3, 5)
    assert sorted(contacts_of("alice")) == ["ann@example.org", "bo@example.org", "ed@example.org"]
    found = [(error["line"], error["column"]) for error in status["errors"]]
    assert found == [(3, "email"), (5, "tags"), (6, "timezone"), (8, "email"), (9, None)]
    assert all(error["reason"] for error in status["errors"])
    report = list(csv.DictReader(io.StringIO(importer.report(status["error_report_url"]))))
    assert [(int(row["line"]), row["column"] or None) for row in report] == found
    assert [row["reason"] for row in report] == [error["reason"] for error in status["errors"]]


def test_only_the_first_errors_stay_on_the_import_but_the_report_has_all(
    importer: Importer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imports_module, "MAX_ERRORS_KEPT", 3)
    importer.chunk_rows = 2
    status = imported(importer, "alice", csv_text(["email"], [[f"bad{n}"] for n in range(7)]))
    assert status["rows_failed"] == 7 and len(status["errors"]) == 3
    report = list(csv.DictReader(io.StringIO(importer.report(status["error_report_url"]))))
    assert [int(row["line"]) for row in report] == list(range(2, 9))


def test_uploading_the_same_file_again_changes_nothing(importer: Importer, clock: FakeClock) -> None:
    # Given a file imported once
    text = csv_text(HEADER, people(30))
    first = imported(importer, "alice", text)
    before = {email: contact.to_simple_dict() for email, contact in contacts_of("alice").items()}

    # When the same bytes are uploaded again, later
    clock.advance(3600)
    again = imported(importer, "alice", text)

    # Then the second import writes nothing and names the first
    assert again["status"] == "completed" and again["duplicate_of"] == first["import_id"]
    assert again["rows_imported"] == 0
    after = {email: contact.to_simple_dict() for email, contact in contacts_of("alice").items()}
    assert after == before  # no field, status or updated_at moved

    # And another tenant's upload of the same bytes is its own import
    assert imported(importer, "bob", text)["duplicate_of"] is None
    assert len(contacts_of("bob")) == 30


def test_a_redelivered_upload_event_imports_once(importer: Importer) -> None:
    created = importer.create("alice")
    importer.upload(created, csv_text(HEADER, people(12)))
    assert importer.run("alice", created["import_id"]) is ImportOutcome.DONE
    item = ImportModel.get("alice", created["import_id"])
    assert importer.run("alice", created["import_id"]) is ImportOutcome.SKIPPED
    again = ImportModel.get("alice", created["import_id"])
    assert again.to_simple_dict() == item.to_simple_dict()
    assert again.rows_imported == 12


def test_a_crash_mid_import_resumes_from_the_last_chunk_without_duplicates_or_loss(
    importer: Importer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 95 rows in chunks of 10, and a crash after the 4th chunk's contacts were written but
    # before its cursor moved
    importer.chunk_rows = 10
    rows = people(95)
    rows[41][0] = "broken"  # one bad row, line 43, in the chunk that crashes
    created = importer.create("alice")
    importer.upload(created, csv_text(HEADER, rows))
    real_merge = imports_module.merge_contacts
    calls = {"n": 0}

    def merge_then_crash(*args: Any, **kwargs: Any) -> None:
        real_merge(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("injected crash after writing, before committing")

    monkeypatch.setattr(imports_module, "merge_contacts", merge_then_crash)
    with pytest.raises(RuntimeError):
        importer.run("alice", created["import_id"])
    midway = importer.status("alice", created["import_id"])
    assert midway["status"] == "importing" and midway["rows_done"] == 40 and midway["rows_total"] == 95

    # When the redelivered message runs it again
    assert importer.run("alice", created["import_id"]) is ImportOutcome.DONE

    # Then every row counted once, every contact there once, the bad row reported once
    status = importer.status("alice", created["import_id"])
    assert (status["rows_done"], status["rows_imported"], status["rows_failed"]) == (95, 94, 1), status
    assert [error["line"] for error in status["errors"]] == [43]
    contacts = contacts_of("alice")
    assert len(contacts) == 94 and "broken" not in contacts
    assert ImportModel.get("alice", created["import_id"]).chunks == 10


def test_a_long_file_continues_in_a_new_invocation(importer: Importer) -> None:
    import imports_handler

    imports_handler.runtime.cache_clear()
    importer.chunk_rows = 1000
    created = importer.create("alice")
    importer.upload(created, csv_text(HEADER, people(2500)))
    importer.messages()
    body = json.dumps({"user_id": "alice", "import_id": created["import_id"]})
    invocations = 0
    # Each invocation has no time left after its first chunk: it hands over through the queue.
    context = ImportContext(seconds=imports_handler.runtime().settings.import_safety_margin_seconds)
    while body is not None:
        invocations += 1
        assert imports_handler.handle_message(body, context) in (["continue"], ["done"])
        waiting = importer.messages()
        body = waiting[0]["Body"] if waiting else None
    status = importer.status("alice", created["import_id"])
    assert status["status"] == "completed" and status["rows_imported"] == 2500
    assert invocations == 3 and len(contacts_of("alice")) == 2500


def test_suppressed_addresses_stay_suppressed(importer: Importer, api: ApiClient, clock: FakeClock) -> None:
    # Given a bounced address on alice's suppression list and a contact who unsubscribed
    for email, reason in (("gone@example.org", "bounced"), ("manual@example.org", "manual")):
        SuppressionModel("alice", contact_id_for(email), email=email, reason=reason, created_at=clock.now()).save()
    given_contacts(api, "alice", {"email": "left@example.org"})
    left = ContactModel.get("alice", contact_id_for("left@example.org"))
    left.update(actions=[ContactModel.status.set("unsubscribed")])

    # When a file names all three and a new address
    rows = [[email, "X", "", "", ""] for email in ("gone@example.org", "manual@example.org", "left@example.org")]
    status = imported(importer, "alice", csv_text(HEADER, [*rows, ["new@example.org", "", "", "", ""]]))

    # Then none of them is mailable again; the new one is
    assert status["rows_imported"] == 4
    statuses = {email: contact.status for email, contact in contacts_of("alice").items()}
    assert statuses == {
        "gone@example.org": ContactStatus.BOUNCED,
        "manual@example.org": ContactStatus.SUPPRESSED,
        "left@example.org": ContactStatus.UNSUBSCRIBED,
        "new@example.org": ContactStatus.SUBSCRIBED,
    }
    # And bob's list is not alice's: the same address is subscribed for him
    imported(importer, "bob", csv_text(HEADER, rows[:1]))
    assert contacts_of("bob")["gone@example.org"].status == ContactStatus.SUBSCRIBED


def test_the_json_import_honours_the_suppression_list_too(importer: Importer, api: ApiClient, clock: FakeClock) -> None:
    SuppressionModel(
        "alice", contact_id_for("gone@example.org"), email="gone@example.org", reason="complained", created_at=1
    ).save()
    given_contacts(api, "alice", {"email": "Gone@Example.org"}, {"email": "ok@example.org"})
    statuses = {email: contact.status for email, contact in contacts_of("alice").items()}
    assert statuses == {"gone@example.org": ContactStatus.COMPLAINED, "ok@example.org": ContactStatus.SUBSCRIBED}


def test_rows_of_one_address_are_merged_the_later_winning_for_what_it_gives(importer: Importer) -> None:
    rows = [
        ["Ann@example.org", "Ann First", "a;b", "Europe/Paris", "one"],
        ["bo@example.org", "Bo", "", "", ""],
        ["ann@EXAMPLE.org", "Ann Second", "", "", "two"],  # no tags, no time zone: the first's stay
    ]
    for chunk_rows in (10, 1):  # within one chunk, and across chunks
        importer.chunk_rows = chunk_rows
        user = f"merge{chunk_rows}"
        given_user(importer.api, user)
        status = imported(importer, user, csv_text(HEADER, rows))
        assert status["rows_imported"] == 3
        contacts = contacts_of(user)
        assert sorted(contacts) == ["ann@example.org", "bo@example.org"]
        ann = contacts["ann@example.org"]
        assert (ann.email, ann.name, list(ann.tags), ann.timezone) == (
            "ann@example.org",
            "Ann Second",
            ["a", "b"],
            "Europe/Paris",
        )
        assert dict(ann.attributes.as_dict() if hasattr(ann.attributes, "as_dict") else ann.attributes) == {
            "first_name": "two"
        }


def test_a_byte_order_mark_quoting_blank_lines_and_any_header_case_are_read(importer: Importer) -> None:
    text = '\ufeffEMAIL,Name,Tags,note\r\nann@example.org,"Smith, Ann",x|y,"two\nlines"\n\nbo@example.org,Bo,,\n'
    status = imported(importer, "alice", text.encode("utf-8"))
    assert status["status"] == "completed", status
    assert (status["rows_total"], status["rows_imported"], status["rows_failed"]) == (2, 2, 0)
    ann = contacts_of("alice")["ann@example.org"]
    assert (ann.name, list(ann.tags)) == ("Smith, Ann", ["x", "y"])
    assert dict(ann.attributes.as_dict() if hasattr(ann.attributes, "as_dict") else ann.attributes) == {
        "note": "two\nlines"
    }


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"name,tags\nAnn,x\n", "no email column"),
        (b"", "empty"),
        (b"email,First Name\na@example.org,Ann\n", "'First Name'"),
        (b"email,name,Email\na@example.org,Ann,b\n", "named twice"),
        (("email," + ",".join(f"c{n}" for n in range(60)) + "\n").encode(), "columns; at most"),
        (b"email,name\ngood@example.org,Good\nbad@example.org,\xe9t\xe9\n", "line 3: not UTF-8"),
        (b"email,name\ngood@example.org,Good\nbad@example.org," + b"x" * 70_000 + b"\n", "line 3: a row takes more"),
        (b'email,name\ngood@example.org,"never closed\n', "line 2"),
    ],
)
def test_a_file_level_problem_fails_the_import_before_anything_is_written(
    importer: Importer, data: bytes, reason: str
) -> None:
    status = imported(importer, "alice", data)
    assert status["status"] == "failed", status
    assert reason in status["reason"]
    assert status["rows_imported"] == 0 and contacts_of("alice") == {}


def test_too_many_rows_or_bytes_fail_the_import(importer: Importer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imports_module, "MAX_IMPORT_ROWS", 5)
    status = imported(importer, "alice", csv_text(HEADER, people(6)))
    assert status["status"] == "failed" and "more than 5 rows" in status["reason"]
    monkeypatch.setattr(imports_module, "MAX_IMPORT_BYTES", 100)
    status = imported(importer, "alice", csv_text(HEADER, people(4, start=10)))
    assert status["status"] == "failed" and "at most 100" in status["reason"]
    assert contacts_of("alice") == {}


def test_a_file_replaced_during_the_import_fails_it(importer: Importer, monkeypatch: pytest.MonkeyPatch) -> None:
    importer.chunk_rows = 5
    created = importer.create("alice")
    importer.upload(created, csv_text(HEADER, people(20)))
    assert importer.run("alice", created["import_id"], seconds_left=0) is ImportOutcome.CONTINUE
    importer.upload(created, csv_text(HEADER, people(20, start=100)))
    assert importer.run("alice", created["import_id"]) is ImportOutcome.DONE
    status = importer.status("alice", created["import_id"])
    assert status["status"] == "failed" and "replaced" in status["reason"]


# ---------------------------------------------------------------- the routes


def test_imports_are_listed_newest_first_in_pages_and_only_the_callers(importer: Importer, clock: FakeClock) -> None:
    ids = [importer.create("alice", {"filename": f"f{n}.csv"})["import_id"] for n in range(3)]
    importer.create("bob")
    first = importer.api.get("/api/imports", user="alice", query="limit=2")
    assert first.status == 200
    assert [item["import_id"] for item in first.body["imports"]] == ids[::-1][:2]
    second = importer.api.get("/api/imports", user="alice", query=f"limit=2&cursor={first.body['cursor']}")
    assert [item["import_id"] for item in second.body["imports"]] == ids[:1] and second.body["cursor"] is None


def test_another_tenants_import_is_not_found(importer: Importer) -> None:
    created = importer.create("alice")
    reply = importer.api.get(f"/api/imports/{created['import_id']}", user="bob")
    assert reply.status == 404, reply.body
    assert importer.api.get("/api/imports/imp_000000000000000000000000", user="alice").status == 404
    assert importer.api.get("/api/imports/not-an-id", user="alice").status == 404


def test_creating_an_import_refuses_bad_input(importer: Importer) -> None:
    assert_rejected(importer.api.post("/api/imports", {"file": "x.csv"}, user="alice"), "file")
    assert_rejected(importer.api.post("/api/imports", {"filename": "x" * 201}, user="alice"), "filename")
    assert_rejected(importer.api.post("/api/imports", {"filename": "a\r\nb"}, user="alice"), "filename")
    assert_rejected(importer.api.post("/api/imports", [1], user="alice"), "body")
    reply = importer.api.call(
        "POST", "/api/imports", "filename=x", user="alice", headers={"Content-Type": "text/plain"}
    )
    assert_rejected(reply, "Content-Type", status=415)
    assert_rejected(importer.api.get("/api/imports", user="alice", query="cursor=%21%21"), "cursor")
    assert_rejected(importer.api.get("/api/imports", user="alice", query="limit=0"), "limit")
    assert importer.api.post("/api/imports", None, user="nobody").status == 403
    assert importer.api.post("/api/imports", None, user=None).status == 401
    assert list(ImportModel.query("alice")) == []


def test_error_rows_count_once_per_row_even_with_several_errors(importer: Importer) -> None:
    rows = [["bad", "", "no space!", "Nowhere/Else", ""]]
    status = imported(importer, "alice", csv_text(HEADER, rows))
    assert status["rows_failed"] == 1 and len(status["errors"]) >= 2


def test_the_row_limits_are_the_ones_documented() -> None:
    assert csv_rows.MAX_IMPORT_ROWS == 1_000_000 and csv_rows.MAX_IMPORT_BYTES == 100 * 1024 * 1024
