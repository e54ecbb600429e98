"""How fast `POST /api/contacts` imports 1,000 contacts on the local runner, against raw baselines.

Starts the local runner (`make serve`'s LocalRunner: a single-threaded moto server in a child
process, the template's resources, the handlers in this process behind the local API Gateway on a
free port) and POSTs over HTTP with a local token. Baselines, on the same embedded AWS in the same
run: 1,000 raw UpdateItem calls one after the other, and 40 raw BatchWriteItem calls of 25 puts.
DynamoDB requests are counted on the wire (retries included) for the contacts table only.

    .venv/bin/python -m bench.contact_import [--contacts 1000] [--rounds 1]

`measure(quick)` is the `python -m bench` entry (1,000 contacts, 200 when quick; reported figures,
no target).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
from botocore.endpoint import Endpoint

from bench.harness import process_cpu_seconds
from local_runner.runner import LocalRunner, RunnerConfig

_DYNAMODB_TARGET = "DynamoDB_20120810."
BATCH_WRITE_LIMIT = 25
# Our own calls to the runner never go through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RequestCounter:
    """Counts DynamoDB requests naming `table` as they are sent (retries included), whichever
    client in this process sends them (the handlers run here)."""

    def __init__(self, table: str) -> None:
        self.counts: Counter[str] = Counter()
        self._table = json.dumps(table).encode()
        self._lock = threading.Lock()

    @contextmanager
    def installed(self) -> Iterator[None]:
        original = Endpoint._send

        def send(endpoint: Any, request: Any) -> Any:
            target = request.headers.get("X-Amz-Target", b"")
            target = target.decode() if isinstance(target, bytes) else target
            body = request.body if isinstance(request.body, bytes) else b""
            if target.startswith(_DYNAMODB_TARGET) and self._table in body:
                with self._lock:
                    self.counts[target.removeprefix(_DYNAMODB_TARGET)] += 1
            return original(endpoint, request)

        Endpoint._send = send
        try:
            yield
        finally:
            Endpoint._send = original

    def take(self) -> Counter[str]:
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts


def post_json(url: str, body: Any, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")  # noqa: S310
    try:
        with _OPENER.open(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def contact_rows(count: int, version: int) -> list[dict[str, Any]]:
    return [
        {
            "email": f"contact{index}@example.com",
            "name": f"Contact {index} (v{version})",
            "tags": ["newsletter", f"list{index % 7}"],
            "attributes": {"first_name": f"C{index}", "orders": index % 13},
        }
        for index in range(count)
    ]


def raw_update_items(dynamodb: Any, table: str, user_id: str, count: int) -> None:
    for index in range(count):
        dynamodb.update_item(
            TableName=table,
            Key={"user_id": {"S": user_id}, "contact_id": {"S": f"ct_{index:024x}"}},
            UpdateExpression="SET #email = :email",
            ExpressionAttributeNames={"#email": "email"},
            ExpressionAttributeValues={":email": {"S": f"contact{index}@example.com"}},
        )


def raw_batch_writes(dynamodb: Any, table: str, user_id: str, count: int) -> None:
    for start in range(0, count, BATCH_WRITE_LIMIT):
        puts = [
            {
                "PutRequest": {
                    "Item": {
                        "user_id": {"S": user_id},
                        "contact_id": {"S": f"ct_{index:024x}"},
                        "email": {"S": f"contact{index}@example.com"},
                    }
                }
            }
            for index in range(start, min(start + BATCH_WRITE_LIMIT, count))
        ]
        reply = dynamodb.batch_write_item(RequestItems={table: puts})
        assert not reply.get("UnprocessedItems"), reply


@dataclass(frozen=True)
class Measure:
    seconds: float
    server_cpu: float  # the embedded AWS process
    client_cpu: float  # this process: the runner, its handlers and the bench


def timed(server_pid: int, action: Callable[[], Any]) -> Measure:
    server, client, start = process_cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    action()
    return Measure(
        time.perf_counter() - start,
        process_cpu_seconds(server_pid) - server,
        time.process_time() - client,
    )


Row = tuple[str, Measure, Counter[str]]


def run(count: int, rounds: int = 1) -> list[Row]:
    """The two baselines, then per round a new import and a re-import of `count` contacts."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as outbox:
        config = RunnerConfig(port=0, outbox=Path(outbox), log_level="WARNING")
        with LocalRunner(config) as runner:
            assert runner.created is not None and runner.aws is not None
            table = runner.created.table_names["ContactsTable"]
            dynamodb = boto3.client("dynamodb")  # the runner pointed this process at the embedded AWS
            counter = RequestCounter(table)
            server = runner.aws.pid

            _, admin = post_json(f"{runner.api_url}/local/token", {"sub": "admin", "groups": ["admins"]})

            def import_contacts(user_id: str, rows: list[dict[str, Any]]) -> None:
                user = {"user_id": user_id, "email": f"{user_id}@example.com", "quota": 0}
                status, _ = post_json(f"{runner.api_url}/api/users", user, admin["token"])
                assert status in (201, 409), status  # only users an admin created may import
                _, reply = post_json(f"{runner.api_url}/local/token", {"sub": user_id, "groups": []})
                status, body = post_json(f"{runner.api_url}/api/contacts", {"contacts": rows}, reply["token"])
                assert status == 200, (status, body)
                assert len(body["contact_ids"]) == len(rows), body

            import_contacts("warm-up", contact_rows(5, 0))  # cold start (settings, clients) is not measured
            with counter.installed():
                measure = timed(server, lambda: raw_update_items(dynamodb, table, "raw-update", count))
                rows.append(("baseline: raw UpdateItem, one after another", measure, counter.take()))
                measure = timed(server, lambda: raw_batch_writes(dynamodb, table, "raw-batch", count))
                rows.append((f"baseline: raw BatchWriteItem of {BATCH_WRITE_LIMIT} puts", measure, counter.take()))
                for number in range(rounds):
                    user = f"bench-{number}"
                    measure = timed(server, partial(import_contacts, user, contact_rows(count, 1)))
                    rows.append((f"import {count} new contacts", measure, counter.take()))
                    measure = timed(server, partial(import_contacts, user, contact_rows(count, 2)))
                    rows.append((f"re-import the same {count}", measure, counter.take()))
    return rows


def measure(quick: bool = False) -> dict[str, Any]:
    """The `python -m bench` entry: 1,000 contacts (200 when quick), one round; reported, no target."""
    count = 200 if quick else 1000
    rows = run(count)
    update_baseline, batch_baseline = rows[0][1].seconds, rows[1][1].seconds
    figures = {
        label: {
            "seconds": round(measure.seconds, 3),
            "server_cpu_seconds": round(measure.server_cpu, 3),
            "runner_cpu_seconds": round(measure.client_cpu, 3),
            "requests_per_contact": round(sum(counts.values()) / count, 3),
            "requests": dict(sorted(counts.items())),
        }
        for label, measure, counts in rows
    }
    table = [
        {
            "measure": f"POST /api/contacts: {label}",
            "figure": (
                f"{measure.seconds:.2f} s, {sum(counts.values()) / count:.2f} requests/contact "
                f"({measure.seconds / update_baseline:.2f}x raw UpdateItem, "
                f"{measure.seconds / batch_baseline:.1f}x raw BatchWriteItem)"
            ),
            "target": "report",
            "met": None,
        }
        for label, measure, counts in rows[2:]
    ]
    return {
        "name": "contact_import",
        "quick": quick,
        "contacts": count,
        "runs": figures,
        "target": None,
        "met": None,
        "rows": table,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1, help="new-contact imports, each for another user")
    args = parser.parse_args(argv)
    count: int = args.contacts
    rows = run(count, args.rounds)
    update_baseline, batch_baseline = rows[0][1].seconds, rows[1][1].seconds
    print(f"local runner (embedded single-threaded moto server), {count} contacts; POST /api/contacts over HTTP")
    print(f"  {'':<44} {'seconds':>8} {'server CPU':>11} {'runner CPU':>11}  requests/contact  vs raw UpdateItem")
    for label, measure, counts in rows:
        print(
            f"  {label:<44} {measure.seconds:8.2f} {measure.server_cpu:11.2f} {measure.client_cpu:11.2f}"
            f"  {sum(counts.values()) / count:16.2f}  {measure.seconds / update_baseline:6.2f}x"
            f"  ({measure.seconds / batch_baseline:.1f}x raw BatchWriteItem)  {dict(counts)}"
        )


if __name__ == "__main__":
    main()
