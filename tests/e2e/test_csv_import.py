"""A 100,000-row CSV imported on the local runner over HTTP: `POST /api/imports`, the file PUT to the
presigned URL (the embedded S3 notifies the import queue, the runner's queue mapping invokes the
import function), progress visible in `GET /api/imports/{id}` while it runs, the bad rows reported
(also in the error report behind its presigned URL), and the same file uploaded again changing
nothing."""

from __future__ import annotations

import csv
import io
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from core.storage.ids import contact_id_for
from tests.e2e.test_local_runner import _OPENER, Runner
from tests.support.serving import serve, until

ROWS = 100_000
BAD_EVERY = 10_000  # rows 0, 10,000, ...: an address that is not one


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    with serve(tmp_path / "outbox") as served:
        api_url, aws_endpoint = served.banner("API", "AWS")
        yield Runner(served.process, api_url, aws_endpoint, tmp_path / "outbox")


def big_csv() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["email", "name", "tags", "city"])
    for n in range(ROWS):
        email = f"bad-{n}" if n % BAD_EVERY == 0 else f"person{n}@example.org"
        writer.writerow([email, f"Person {n}", f"imported|batch{n % 10}", f"City {n % 97}"])
    return out.getvalue().encode()


def put(url: str, headers: dict[str, str], data: bytes) -> int:
    request = urllib.request.Request(url, data=data, method="PUT", headers=headers)  # noqa: S310 - presigned http
    with _OPENER.open(request, timeout=120) as response:
        return int(response.status)


def fetch(url: str) -> str:
    with _OPENER.open(url, timeout=60) as response:
        return str(response.read().decode())


def wait_for_import(runner: Runner, token: str, import_id: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        status = runner.ok("GET", f"/api/imports/{import_id}", token=token)
        seen.append(status)
        time.sleep(0.75)
        return status if status["status"] in ("completed", "failed") else None

    result: dict[str, Any] = until(finished, 900, f"import {import_id} to finish")
    return result


@pytest.mark.slow  # 100,000 rows through the single-threaded embedded AWS: minutes
def test_a_100k_row_csv_is_imported_with_progress_and_a_reupload_changes_nothing(runner: Runner) -> None:
    admin = runner.token("admin", ["admins"])
    alice = runner.token("alice")
    runner.ok("POST", "/api/users", {"user_id": "alice", "email": "alice@example.com", "quota": 10}, admin)
    data = big_csv()

    # When alice uploads the file to the URL her new import gives
    created = runner.ok("POST", "/api/imports", {"filename": "everyone.csv"}, alice)
    assert put(created["upload_url"], created["headers"], data) == 200
    seen: list[dict[str, Any]] = []
    status = wait_for_import(runner, alice, created["import_id"], seen)

    # Then it completes, every good row a contact, every bad one reported
    bad = ROWS // BAD_EVERY
    assert status["status"] == "completed", status
    assert (status["rows_total"], status["rows_done"], status["rows_imported"], status["rows_failed"]) == (
        ROWS,
        ROWS,
        ROWS - bad,
        bad,
    )
    assert [(error["line"], error["column"]) for error in status["errors"]] == [
        (n + 2, "email") for n in range(0, ROWS, BAD_EVERY)
    ]
    report = list(csv.DictReader(io.StringIO(fetch(status["error_report_url"]))))
    assert [int(row["line"]) for row in report] == [n + 2 for n in range(0, ROWS, BAD_EVERY)]

    # And its progress was visible while it ran: the row count known, rows done growing
    running = [s for s in seen if s["status"] == "importing" and s["phase"] == "writing"]
    assert running, "no poll saw the import running"
    assert all(s["rows_total"] == ROWS for s in running)
    done = [s["rows_done"] for s in running]
    assert done == sorted(done) and any(0 < n < ROWS for n in done), done

    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=runner.aws_endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106 - the embedded AWS takes any
    )

    def contacts() -> int:
        pages = dynamodb.get_paginator("query").paginate(
            TableName="ContactsTable",
            KeyConditionExpression="user_id = :u",
            ExpressionAttributeValues={":u": {"S": "alice"}},
            Select="COUNT",
        )
        return sum(page["Count"] for page in pages)

    def one(n: int) -> dict[str, Any]:
        key = {"user_id": {"S": "alice"}, "contact_id": {"S": contact_id_for(f"person{n}@example.org")}}
        item: dict[str, Any] = dynamodb.get_item(TableName="ContactsTable", Key=key)["Item"]
        return item

    assert contacts() == ROWS - bad
    sample = one(54_321)
    assert sample["name"]["S"] == "Person 54321" and sample["attributes"]["M"] == {"city": {"S": f"City {54_321 % 97}"}}
    assert [tag["S"] for tag in sample["tags"]["L"]] == ["imported", "batch1"]

    # When the same file is uploaded again, to a new import
    again = runner.ok("POST", "/api/imports", None, alice)
    assert put(again["upload_url"], again["headers"], data) == 200
    repeated = wait_for_import(runner, alice, again["import_id"], [])

    # Then it names the first and nothing moved
    assert repeated["status"] == "completed" and repeated["duplicate_of"] == created["import_id"]
    assert repeated["rows_imported"] == 0
    assert contacts() == ROWS - bad and one(54_321) == sample
    listed = runner.ok("GET", "/api/imports", token=alice)
    assert [item["import_id"] for item in listed["imports"]] == [again["import_id"], created["import_id"]]
