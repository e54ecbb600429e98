"""How fast a CSV import (POST /api/imports, the file PUT to its presigned URL, the import function)
imports 100,000 rows on the local runner, against a raw BatchWriteItem of the same contact items on
the same embedded AWS in the same run.

Starts the local runner (a single-threaded moto server in a child process, the template's
resources, the handlers in this process), creates an import over HTTP, PUTs the CSV to the
presigned URL and polls `GET /api/imports/{id}` until it completes: the time from the PUT to
`completed` is the import's (S3 notification, queue, check pass, chunks, report). The baseline is
BatchWriteItem of 25 whole-item puts, one request after another, of the same contacts for another
user. DynamoDB and S3 requests the import makes are counted on the wire (this process's clients).

    .venv/bin/python -m bench.csv_import [--quick]

`measure(quick)` is the `python -m bench` entry (100,000 rows, 10,000 when quick; reported, no target).
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from bench.contact_import import BATCH_WRITE_LIMIT, Measure, post_json, timed
from bench.harness import RequestCounter, by_operation, cli, say
from core.storage.ids import contact_id_for
from local_runner.runner import LocalRunner, RunnerConfig

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
POLL_SECONDS = 0.5


def csv_rows(count: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["email", "name", "tags", "timezone", "first_name", "orders"])
    for n in range(count):
        writer.writerow([f"contact{n}@example.com", f"Contact {n}", f"newsletter;list{n % 7}", "UTC", f"C{n}", n % 13])
    return out.getvalue().encode()


def contact_items(user_id: str, count: int, now: float) -> list[dict[str, Any]]:
    """The items the import writes for `csv_rows(count)`, as whole-item puts."""
    return [
        {
            "user_id": {"S": user_id},
            "contact_id": {"S": contact_id_for(f"contact{n}@example.com")},
            "email": {"S": f"contact{n}@example.com"},
            "name": {"S": f"Contact {n}"},
            "tags": {"L": [{"S": "newsletter"}, {"S": f"list{n % 7}"}]},
            "timezone": {"S": "UTC"},
            "attributes": {"M": {"first_name": {"S": f"C{n}"}, "orders": {"S": str(n % 13)}}},
            "status": {"S": "subscribed"},
            "created_at": {"N": str(now)},
            "updated_at": {"N": str(now)},
        }
        for n in range(count)
    ]


def raw_batch_writes(dynamodb: Any, table: str, items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), BATCH_WRITE_LIMIT):
        puts = [{"PutRequest": {"Item": item}} for item in items[start : start + BATCH_WRITE_LIMIT]]
        pending: dict[str, Any] = {table: puts}
        while pending:
            pending = dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}


def get_json(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310 - http only
    with _OPENER.open(request, timeout=120) as response:
        reply: dict[str, Any] = json.loads(response.read())
        return reply


def run(rows: int) -> dict[str, Any]:
    data = csv_rows(rows)
    with tempfile.TemporaryDirectory() as outbox:
        config = RunnerConfig(port=0, outbox=Path(outbox), log_level="WARNING")
        with LocalRunner(config) as runner:
            assert runner.created is not None and runner.aws is not None
            table = runner.created.table_names["ContactsTable"]
            api = runner.api_url
            server = runner.aws.pid
            _, admin = post_json(f"{api}/local/token", {"sub": "admin", "groups": ["admins"]})
            _, alice = post_json(f"{api}/local/token", {"sub": "bench", "groups": []})
            token = alice["token"]
            user = {"user_id": "bench", "email": "bench@example.com", "quota": 0}
            post_json(f"{api}/api/users", user, admin["token"])

            say(f"csv_import: raw BatchWriteItem of {rows} contact items")
            dynamodb = boto3.client("dynamodb")
            items = contact_items("raw-batch", rows, time.time())
            baseline = timed(server, lambda: raw_batch_writes(dynamodb, table, items))

            say(f"csv_import: importing {rows} rows ({len(data) / 1e6:.1f} MB)")
            polls: list[dict[str, Any]] = []
            counter = RequestCounter()

            def import_file() -> None:
                _, created = post_json(f"{api}/api/imports", {"filename": "bench.csv"}, token)
                request = urllib.request.Request(  # noqa: S310 - presigned http
                    created["upload_url"], data=data, method="PUT", headers=created["headers"]
                )
                with _OPENER.open(request, timeout=300) as response:
                    assert response.status == 200
                while True:
                    with counter.uncounted():
                        status = get_json(f"{api}/api/imports/{created['import_id']}", token)
                    polls.append({"at": time.perf_counter(), **status})
                    if status["status"] in ("completed", "failed"):
                        return
                    time.sleep(POLL_SECONDS)

            with counter.installed():
                imported = timed(server, import_file)
            final = polls[-1]
            assert final["status"] == "completed" and final["rows_imported"] == rows, final
            counts = counter.take()
            return {
                "rows": rows,
                "bytes": len(data),
                "baseline": baseline,
                "import": imported,
                "final": final,
                "first_progress_seconds": _first_progress(polls),
                "dynamodb": by_operation(counts, "dynamodb"),
                "s3": by_operation(counts, "s3"),
                "sqs": by_operation(counts, "sqs"),
            }


def _first_progress(polls: list[dict[str, Any]]) -> float | None:
    """Seconds from the first poll to the first one showing rows done."""
    moved = [poll["at"] for poll in polls if poll["rows_done"] > 0]
    return round(moved[0] - polls[0]["at"], 2) if moved else None


def _rate(rows: int, measure: Measure) -> float:
    return rows / measure.seconds if measure.seconds else 0.0


def measure(quick: bool = False) -> dict[str, Any]:
    rows = 10_000 if quick else 100_000
    result = run(rows)
    baseline: Measure = result["baseline"]
    imported: Measure = result["import"]
    import_rate, raw_rate = _rate(rows, imported), _rate(rows, baseline)
    dynamodb_requests = sum(result["dynamodb"].values())
    figures: dict[str, Any] = {
        "rows": rows,
        "megabytes": round(result["bytes"] / 1e6, 2),
        "import_seconds": round(imported.seconds, 2),
        "import_rows_per_second": round(import_rate),
        "import_server_cpu_seconds": round(imported.server_cpu, 2),
        "import_runner_cpu_seconds": round(imported.client_cpu, 2),
        "raw_batch_write_seconds": round(baseline.seconds, 2),
        "raw_batch_write_rows_per_second": round(raw_rate),
        "raw_batch_write_server_cpu_seconds": round(baseline.server_cpu, 2),
        "ratio_raw_over_import": round(raw_rate / import_rate, 2) if import_rate else None,
        "dynamodb_requests_per_row": round(dynamodb_requests / rows, 4),
        "requests": {"dynamodb": result["dynamodb"], "s3": result["s3"], "sqs": result["sqs"]},
        "first_progress_seconds": result["first_progress_seconds"],
    }
    table = [
        {
            "measure": f"{rows:,}-row CSV import (PUT to completed)",
            "figure": (
                f"{imported.seconds:.1f} s, {import_rate:,.0f} rows/s; raw BatchWriteItem {raw_rate:,.0f} rows/s "
                f"({figures['ratio_raw_over_import']}x faster); {dynamodb_requests / rows:.3f} DynamoDB requests/row"
            ),
            "target": "report",
            "met": None,
        }
    ]
    return {"name": "csv_import", "quick": quick, **figures, "target": None, "met": None, "rows": table}


if __name__ == "__main__":
    cli(measure, __doc__, None)
