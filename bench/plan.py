"""How fast the planner turns one task of 20,000 recipients into subtasks, against a raw baseline.

Starts an embedded AWS (a single-threaded moto server in a child process, local_runner.moto_server)
with the template's resources, seeds one user, service, sender and template and the contacts (raw
BatchWriteItem, not timed), then per round:

- plan: a task naming every contact, planned by the planner function's own handler
  (`planner_handler.lambda_handler`, imported as the Lambda runtime would) in this process, fed its
  SQS message as the trigger would (continuations too, should one invocation not be enough). Only
  the handler's invocations are timed, not the queue's receive and delete.
- baseline: the subtask items the planner wrote, read back and re-keyed to a fresh task id, written
  by a bare BatchWriteItem loop of 25 puts (already in wire format), with the same client config.

DynamoDB requests are counted on the wire (retries included, every table) by wrapping botocore's
`Endpoint._send`. Figures are medians over rounds; `ratio` is the median of each round's
baseline/plan (paired, so load from other processes on the machine mostly cancels out).

    .venv/bin/python -m bench.plan [--recipients 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import boto3
from botocore.config import Config
from botocore.endpoint import Endpoint

from bench.harness import environment, process_cpu_seconds
from local_runner.functions import function_specs, load_handler
from local_runner.moto_server import EmbeddedAws
from local_runner.template import create_resources, environment_for, load_template
from local_runner.triggers import sqs_event

NAME = "plan"
TARGET_RATIO = 0.8  # plan at least this fast relative to the raw BatchWriteItem loop
TARGET_REQUESTS_PER_25 = 1.1  # DynamoDB requests per 25 subtasks (one BatchWriteItem is 1.0)
BATCH_WRITE_LIMIT = 25
FULL_RECIPIENTS = 20_000
QUICK_RECIPIENTS = 5_000  # enough that a plan's fixed requests (lease, reservation, finish) are not the figure
USER_ID = "bench-user"
SERVICE_ID = "svc_bench"
FUNCTION = "PlannerFunction"
_DYNAMODB_TARGET = "DynamoDB_20120810."


# ---------------------------------------------------------------- counting and timing


class RequestCounter:
    """Counts DynamoDB requests by operation as they are sent (retries included), from any client
    in this process."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def installed(self) -> Iterator[None]:
        original = Endpoint._send

        def send(endpoint: Any, request: Any) -> Any:
            target = request.headers.get("X-Amz-Target", b"")
            target = target.decode() if isinstance(target, bytes) else target
            if target.startswith(_DYNAMODB_TARGET):
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


@dataclass
class Measure:
    seconds: float = 0.0
    server_cpu: float = 0.0  # the embedded AWS process
    client_cpu: float = 0.0  # this process
    requests: Counter[str] = field(default_factory=Counter)

    def add(self, server_pid: int, action: Callable[[], Any]) -> Any:
        server, client, start = process_cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        result = action()
        self.seconds += time.perf_counter() - start
        self.server_cpu += process_cpu_seconds(server_pid) - server
        self.client_cpu += time.process_time() - client
        return result

    def per_25(self, subtasks: int) -> float:
        return sum(self.requests.values()) / (subtasks / BATCH_WRITE_LIMIT)


# ---------------------------------------------------------------- environment


class LambdaContext:
    """What the Lambda runtime passes the handler: its identity and the time left."""

    function_name = FUNCTION
    memory_limit_in_mb = 512
    invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}"

    def __init__(self, timeout_seconds: float) -> None:
        self.aws_request_id = uuid.uuid4().hex
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


# ---------------------------------------------------------------- seeding (not timed)


def _contact_item(index: int, now: float) -> dict[str, Any]:
    from core.storage.ids import contact_id_for

    email = f"person{index}@example.org"
    return {
        "user_id": {"S": USER_ID},
        "contact_id": {"S": contact_id_for(email)},
        "email": {"S": email},
        "name": {"S": f"Person {index}"},
        "tags": {"L": [{"S": "newsletter"}, {"S": f"list{index % 7}"}]},
        "attributes": {"M": {"first_name": {"S": f"P{index}"}, "number": {"N": str(index)}}},
        "status": {"S": "subscribed"},
        "created_at": {"N": str(now)},
        "updated_at": {"N": str(now)},
    }


def batch_write(dynamodb: Any, table: str, items: list[dict[str, Any]]) -> None:
    """The raw loop: BatchWriteItem of 25 puts each, one after the other."""
    for start in range(0, len(items), BATCH_WRITE_LIMIT):
        puts = [{"PutRequest": {"Item": item}} for item in items[start : start + BATCH_WRITE_LIMIT]]
        reply = dynamodb.batch_write_item(RequestItems={table: puts})
        assert not reply.get("UnprocessedItems"), "moto never throttles"


def seed(dynamodb: Any, tables: dict[str, str], recipients: int, rounds: int, now: float) -> None:
    put = dynamodb.put_item
    put(
        TableName=tables["ServicesTable"],
        Item={
            "service_id": {"S": SERVICE_ID},
            "name": {"S": "bench"},
            "region": {"S": "us-east-1"},
            "sending_rate": {"N": "0.01"},
            "daily_quota": {"N": "10000000"},
            "enabled": {"BOOL": True},
            "is_healthy": {"BOOL": True},
            "created_at": {"N": str(now)},
        },
    )
    quota = str(recipients * (rounds + 1))
    put(
        TableName=tables["UsersTable"],
        Item={
            "user_id": {"S": USER_ID},
            "email": {"S": f"{USER_ID}@example.com"},
            "quota": {"N": quota},
            "remaining_quota": {"N": quota},
            "service_ids": {"L": [{"S": SERVICE_ID}]},
            "created_at": {"N": str(now)},
        },
    )
    put(
        TableName=tables["SendersTable"],
        Item={
            "user_id": {"S": USER_ID},
            "sender_id": {"S": "snd_1"},
            "email": {"S": "news@news.example.com"},
            "name": {"S": "Newsroom"},
            "created_at": {"N": str(now)},
        },
    )
    put(
        TableName=tables["TemplatesTable"],
        Item={
            "user_id": {"S": USER_ID},
            "template_id": {"S": "tpl_1"},
            "name": {"S": "hello"},
            "subject": {"S": "Hello {{ name }}"},
            "html": {"S": "<p>Hi {{ name }}. <a href='{{ unsubscribe_url }}'>Unsubscribe</a></p>"},
            "created_at": {"N": str(now)},
        },
    )
    batch_write(dynamodb, tables["ContactsTable"], [_contact_item(index, now) for index in range(recipients)])


def seed_task(now: float) -> str:
    from core.states import TaskStatus
    from core.storage.ids import new_id
    from core.storage.models import TaskModel

    task = TaskModel(
        new_id("task"),
        user_id=USER_ID,
        name="bench campaign",
        sender_id="snd_1",
        template_ids=["tpl_1"],
        include_tags=["newsletter"],
        has_rule=True,
        status=TaskStatus.PLANNING,
        created_at=now,
        updated_at=now,
    )
    task.save()
    return str(task.task_id)


def subtask_items(dynamodb: Any, table: str, task_id: str) -> list[dict[str, Any]]:
    """Every subtask item of a task, in wire format, in plan order."""
    from core.storage.ids import SUBTASK_SHARDS

    items: list[dict[str, Any]] = []
    paginator = dynamodb.get_paginator("query")
    for shard in range(SUBTASK_SHARDS):
        pages = paginator.paginate(
            TableName=table,
            KeyConditionExpression="#p = :p",
            ExpressionAttributeNames={"#p": "partition"},
            ExpressionAttributeValues={":p": {"S": f"{task_id}#{shard:02d}"}},
        )
        for page in pages:
            items.extend(page["Items"])
    return sorted(items, key=lambda item: int(item["seq"]["N"]) if "seq" in item else 0)


def rekeyed(items: list[dict[str, Any]], old: str, new: str) -> list[dict[str, Any]]:
    """The same items for another task id: every string naming the old task names the new one."""

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: swap(inner) for key, inner in value.items()}
        if isinstance(value, list):
            return [swap(inner) for inner in value]
        return value.replace(old, new) if isinstance(value, str) else value

    return [swap(item) for item in items]


# ---------------------------------------------------------------- the benchmark


@dataclass
class Round:
    recipients: int
    plan: Measure
    baseline: Measure
    item_bytes: int  # mean size of one subtask item as JSON on the wire

    @property
    def ratio(self) -> float:
        return self.baseline.seconds / self.plan.seconds


@dataclass
class PlannerFunction:
    """The planner function's handler, fed its queue's messages as the SQS trigger would."""

    handler: Callable[..., Any]
    timeout_seconds: float
    queue_url: str
    queue_arn: str
    sqs: Any
    counter: RequestCounter
    server_pid: int

    def plan(self, task_id: str) -> Measure:
        """Enqueues the task's plan job, then invokes the handler once per message until the queue
        is empty (continuations included); only the invocations are measured."""
        measure = Measure()
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps({"task_id": task_id, "job": "plan"}))
        while messages := self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=1).get("Messages"):
            event = sqs_event(messages, self.queue_arn)
            self.counter.take()
            with self.counter.installed():
                invoke = partial(self.handler, event, LambdaContext(self.timeout_seconds))
                reply = measure.add(self.server_pid, invoke)
            measure.requests += self.counter.take()
            assert reply == {"batchItemFailures": []}, reply
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])
        return measure


def run(recipients: int = FULL_RECIPIENTS, rounds: int = 3) -> list[Round]:
    results: list[Round] = []
    with EmbeddedAws() as aws, environment(aws.environment()):
        created = create_resources(boto3.Session())
        # The handler logs one line per invocation; the table is what this prints.
        with environment({**environment_for(created, [FUNCTION]), "POWERTOOLS_LOG_LEVEL": "WARNING"}):
            spec = function_specs(load_template())[FUNCTION]
            handler = load_handler(spec)
            import planner_handler

            from core.storage.models import TaskModel

            planner_handler.runtime.cache_clear()  # settings, tables and clients for this server
            runtime = planner_handler.runtime()
            try:
                tables = created.table_names
                subtasks_table = tables["SubtasksTable"]
                # The baseline's client is configured as the planner's is.
                dynamodb = boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 5}))
                sqs = boto3.client("sqs")
                now = time.time()
                seed(dynamodb, tables, recipients, rounds, now - 60)
                counter = RequestCounter()
                function = PlannerFunction(
                    handler,
                    spec.timeout_seconds,
                    runtime.settings.planner_queue_url,
                    created.queue_arns["PlannerQueue"],
                    sqs,
                    counter,
                    aws.pid,
                )
                for _ in range(rounds):
                    task_id = seed_task(now)
                    plan = function.plan(task_id)
                    task = TaskModel.get(task_id, consistent_read=True)
                    assert (task.status, int(task.counts.total)) == ("queued", recipients), (task.status, task.counts)
                    items = rekeyed(subtask_items(dynamodb, subtasks_table, task_id), task_id, f"{task_id}-raw")
                    assert len(items) == recipients, len(items)
                    baseline = Measure()
                    counter.take()
                    with counter.installed():
                        baseline.add(aws.pid, partial(batch_write, dynamodb, subtasks_table, items))
                    baseline.requests = counter.take()
                    item_bytes = round(statistics.mean(len(json.dumps(item)) for item in items))
                    results.append(Round(recipients, plan, baseline, item_bytes))
            finally:
                planner_handler.runtime.cache_clear()  # its clients point at a server about to stop
    return results


def summary(results: list[Round]) -> dict[str, Any]:
    recipients = results[0].recipients
    median = statistics.median
    seconds = median(r.plan.seconds for r in results)
    ratio = median(r.ratio for r in results)
    per_25 = median(r.plan.per_25(recipients) for r in results)
    requests = results[len(results) // 2].plan.requests if len(results) % 2 else results[-1].plan.requests
    baseline_seconds = median(r.baseline.seconds for r in results)
    ratio_met, requests_met = ratio >= TARGET_RATIO, per_25 <= TARGET_REQUESTS_PER_25
    return {
        "name": NAME,
        "recipients": recipients,
        "rounds": len(results),
        "seconds": round(seconds, 3),
        "plan_seconds": round(seconds, 3),  # `seconds` again: the bench harness stores its own run time there
        "baseline_seconds": round(baseline_seconds, 3),
        "ratio": round(ratio, 3),
        "requests_per_25": round(per_25, 3),
        "requests": dict(sorted(requests.items())),
        "baseline_requests_per_25": round(median(r.baseline.per_25(recipients) for r in results), 3),
        "server_cpu_seconds": round(median(r.plan.server_cpu for r in results), 3),
        "baseline_server_cpu_seconds": round(median(r.baseline.server_cpu for r in results), 3),
        "client_cpu_seconds": round(median(r.plan.client_cpu for r in results), 3),
        "baseline_client_cpu_seconds": round(median(r.baseline.client_cpu for r in results), 3),
        "subtask_item_bytes": results[-1].item_bytes,
        "per_round": [
            {"seconds": round(r.plan.seconds, 3), "baseline_seconds": round(r.baseline.seconds, 3)} for r in results
        ],
        "target": {"ratio": TARGET_RATIO, "requests_per_25": TARGET_REQUESTS_PER_25},
        "met": ratio_met and requests_met,
        "rows": [
            {
                "measure": f"{recipients:,} recipients vs raw BatchWriteItem (baseline/plan)",
                "figure": f"{ratio:.2f}x ({seconds:.1f} s vs {baseline_seconds:.1f} s)",
                "target": f">= {TARGET_RATIO}x",
                "met": ratio_met,
            },
            {
                "measure": "DynamoDB requests per 25 subtasks",
                "figure": f"{per_25:.3f}",
                "target": f"<= {TARGET_REQUESTS_PER_25}",
                "met": requests_met,
            },
        ],
    }


def measure(quick: bool = False) -> dict[str, Any]:
    """The `python -m bench` entry: one round of 5,000 recipients when quick, else 3 of 20,000."""
    return summary(run(QUICK_RECIPIENTS, rounds=1) if quick else run(FULL_RECIPIENTS, rounds=3))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=FULL_RECIPIENTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    args = parser.parse_args(argv)
    results = run(args.recipients, args.rounds)
    figures = summary(results)
    recipients = figures["recipients"]
    print(f"plan {recipients} recipients, embedded single-threaded moto server, median of {len(results)} rounds")
    print(f"  {'':<36} {'seconds':>8} {'server CPU':>11} {'client CPU':>11} {'requests/25':>12}")
    for label, key in (("planner (handler, in-process)", ""), ("baseline: raw BatchWriteItem of 25", "baseline_")):
        print(
            f"  {label:<36} {figures[key + 'seconds']:8.2f} {figures[key + 'server_cpu_seconds']:11.2f}"
            f" {figures[key + 'client_cpu_seconds']:11.2f} {figures[key + 'requests_per_25']:12.3f}"
        )
    print(f"  ratio baseline/plan {figures['ratio']:.2f} (target >= {TARGET_RATIO});", end=" ")
    print(f"requests per 25 subtasks {figures['requests_per_25']:.3f} (target <= {TARGET_REQUESTS_PER_25})")
    print(f"  planner requests: {figures['requests']}; subtask item {figures['subtask_item_bytes']} bytes")
    print(f"  rounds: {figures['per_round']}; met: {figures['met']}")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
