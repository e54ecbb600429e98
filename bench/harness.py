"""What the benchmarks share: an embedded AWS with the template's resources, a request counter on
the wire, item-aware DynamoDB capacity accounting, timing, seeding and the dispatcher in-process.

- `EmbeddedWorld`: a single-threaded moto server in a child process (local_runner.moto_server) with
  this process's boto3 and PynamoDB pointed at it, as tests/concurrency/conftest.py does; `fresh()`
  resets it and recreates the template's resources, so every measured run starts from empty tables.
- `RequestCounter`: every request any botocore client in this process sends (PynamoDB's too),
  retries included, by (service, operation), by wrapping `botocore.endpoint.Endpoint._get_response`,
  which runs once per attempt and sees the operation, the request and the parsed reply.
- `CapacityMeter`: DynamoDB on-demand request units as AWS would bill them. Writes: the larger of
  the item before and after, 1 WRU per KB, plus each global secondary index the write changes (an
  entry put or deleted: one write, an entry whose key moved: two, an entry whose projected
  attributes changed: one; each by its projected size); a refused conditional write by the item it
  checked; a transaction's items twice. The items before and after come from a shadow copy of the
  tables that every observed write moves. Reads from the replies: 4 KB units, strongly consistent
  1 RRU, eventually consistent (and every index) 0.5.
- `SendLog` / `ses_latency`: hooks on an SES v2 client: when each SendEmail left (and for which
  task), and a fixed sleep before each send to simulate SES's network latency.
- `run_dispatcher`: `core.dispatch.dispatcher.dispatch_service` as the dispatcher Lambda runs it, with its
  production dependencies (the handler's client configuration, the settings' retries and batch
  size, the default in-flight pool), one invocation after another, each timed (Lambda duration).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.endpoint import Endpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
# The core layer is on the path in Lambda (and in pytest's config); `python -m bench` adds it here.
for _path in (REPO_ROOT / "layers" / "core", REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from local_runner.moto_server import EmbeddedAws  # noqa: E402 - needs the paths above
from local_runner.template import create_resources, environment_for, load_template  # noqa: E402

if TYPE_CHECKING:
    from core.dispatch.dispatcher import DispatcherDeps, DispatchReport
    from core.settings import Settings

KB = 1024
READ_UNIT_BYTES = 4 * KB
SENDER_DOMAIN = "news.example.com"  # tests/support/dispatching.py's verified sender domain


# ---------------------------------------------------------------- environment and processes


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in os.environ (boto3, PynamoDB and the settings read it), restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cli(measure: Callable[[bool], dict[str, Any]], description: str | None, argv: list[str] | None) -> None:
    """A benchmark module run on its own: `python -m bench.<name> [--quick]` prints its figures."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.quick), indent=2))


def process_cpu_seconds(pid: int) -> float:
    """CPU time a process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    """Progress on stderr: stdout is the table."""
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- timing


@dataclass
class Measure:
    """Wall clock and CPU of what ran inside `measure()`: the embedded AWS's and this process's."""

    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @contextlib.contextmanager
    def measure(self, server_pid: int) -> Iterator[None]:
        server, client, start = process_cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start
            self.server_cpu += process_cpu_seconds(server_pid) - server
            self.client_cpu += time.process_time() - client


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (fraction in 0..1) of `values`."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def gaps(times: list[float]) -> list[float]:
    ordered = sorted(times)
    return [later - earlier for earlier, later in itertools.pairwise(ordered)]


def max_in_window(times: list[float], window: float) -> int:
    """The most events in any half-open window of `window` seconds."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, moment in enumerate(ordered):
        while ordered[start] <= moment - window:
            start += 1
        most = max(most, end - start + 1)
    return most


def rounded(value: float, digits: int = 3) -> float | None:
    """JSON-safe: NaN and infinities become null."""
    return round(value, digits) if math.isfinite(value) else None


# ---------------------------------------------------------------- requests on the wire


@dataclass(frozen=True)
class Call:
    """One attempt of one request, as botocore sent it and parsed its reply."""

    service: str  # botocore's service name: dynamodb, sesv2, sqs, ...
    operation: str
    body: bytes
    parsed: Mapping[str, Any] | None  # None when it failed on the way (connection error)

    @property
    def error_code(self) -> str | None:
        error = (self.parsed or {}).get("Error") or {}
        code = error.get("Code")
        return str(code) if code else None

    def json_body(self) -> dict[str, Any]:
        try:
            loaded = json.loads(self.body or b"{}")
        except ValueError:
            return {}
        return loaded if isinstance(loaded, dict) else {}


Observer = Callable[[Call], None]


class RequestCounter:
    """Counts every request this process sends, by (service, operation), retries included."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.observers: list[Observer] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Requests this thread sends meanwhile are the bench's own: neither counted nor observed."""
        self._local.off = True
        try:
            yield
        finally:
            self._local.off = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[RequestCounter]:
        original = Endpoint._get_response

        def get_response(endpoint: Any, request: Any, operation_model: Any, context: Any) -> Any:
            success, exception = original(endpoint, request, operation_model, context)
            if getattr(self._local, "off", False):
                return success, exception
            body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
            call = Call(
                operation_model.service_model.service_name,
                operation_model.name,
                body,
                success[1] if success is not None else None,
            )
            with self._lock:
                self.counts[(call.service, call.operation)] += 1
                observers = list(self.observers)
            for observer in observers:
                observer(call)
            return success, exception

        Endpoint._get_response = get_response
        try:
            yield self
        finally:
            Endpoint._get_response = original

    def take(self) -> Counter[tuple[str, str]]:
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts


def by_operation(counts: Mapping[tuple[str, str], int], service: str) -> dict[str, int]:
    return dict(sorted((operation, n) for (name, operation), n in counts.items() if name == service))


def by_service(counts: Mapping[tuple[str, str], int]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for (service, _), n in counts.items():
        totals[service] += n
    return dict(sorted(totals.items()))


# ---------------------------------------------------------------- DynamoDB capacity, item-aware


def attribute_size(value: Mapping[str, Any]) -> int:
    """Bytes DynamoDB counts for one attribute value (developer guide, "Item sizes and formats")."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        return number_size(str(inner))
    if kind == "B":
        return len(inner) if isinstance(inner, bytes | bytearray) else len(str(inner)) * 3 // 4
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(item).encode()) for item in inner)
    if kind == "NS":
        return sum(number_size(str(item)) for item in inner)
    if kind == "BS":
        return sum(len(item) if isinstance(item, bytes | bytearray) else len(str(item)) * 3 // 4 for item in inner)
    if kind == "L":  # 3 bytes per document, 1 per element
        return 3 + sum(1 + attribute_size(item) for item in inner)
    if kind == "M":
        return 3 + sum(1 + len(name.encode()) + attribute_size(item) for name, item in inner.items())
    raise ValueError(f"unknown attribute type {kind}")


def number_size(text: str) -> int:
    """About one byte per two significant digits, plus one (plus one when negative)."""
    negative = text.startswith("-")
    digits = text.lstrip("+-").lower().split("e")[0].replace(".", "").strip("0")
    return max(1, math.ceil(len(digits) / 2)) + 1 + (1 if negative else 0)


def item_size(item: Mapping[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def units(size: int, unit: int) -> int:
    """Request units for an item (or a read) of `size` bytes: rounded up, at least one."""
    return max(1, math.ceil(size / unit))


@dataclass(frozen=True)
class IndexSpec:
    name: str
    keys: tuple[str, ...]
    projection: str  # ALL, KEYS_ONLY or INCLUDE
    included: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableSpec:
    name: str
    keys: tuple[str, ...]
    indexes: tuple[IndexSpec, ...] = ()

    def index_entry(self, index: IndexSpec, item: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """What the index holds for `item`: None when the item lacks one of the index's keys."""
        if item is None or any(key not in item for key in index.keys):
            return None
        if index.projection == "ALL":
            return dict(item)
        kept = {*self.keys, *index.keys, *(index.included if index.projection == "INCLUDE" else ())}
        return {name: value for name, value in item.items() if name in kept}


def table_specs(template: Mapping[str, Any] | None = None) -> dict[str, TableSpec]:
    """Keys and global secondary indexes of every table of the template (named by logical id, as
    local_runner.template creates them)."""
    template = template or load_template()
    specs = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::DynamoDB::Table":
            continue
        props = resource["Properties"]
        indexes = tuple(
            IndexSpec(
                name=index["IndexName"],
                keys=tuple(key["AttributeName"] for key in index["KeySchema"]),
                projection=index["Projection"]["ProjectionType"],
                included=tuple(index["Projection"].get("NonKeyAttributes", ())),
            )
            for index in props.get("GlobalSecondaryIndexes", ())
        )
        specs[logical_id] = TableSpec(logical_id, tuple(key["AttributeName"] for key in props["KeySchema"]), indexes)
    return specs


def write_units(
    spec: TableSpec, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> tuple[int, dict[str, int]]:
    """WRU of one write on the table, and on each global secondary index it changes (AWS: a new
    entry is one write, a removed entry one, an entry whose key moved two, an entry whose projected
    attributes changed one; each by its projected size, rounded up to 1 KB)."""
    table = units(max(item_size(old), item_size(new)), KB)
    indexes: dict[str, int] = {}
    for index in spec.indexes:
        before, after = spec.index_entry(index, old), spec.index_entry(index, new)
        if before is None and after is None:
            continue
        if before is None or after is None:
            cost = units(item_size(before or after), KB)
        elif any(before[key] != after[key] for key in index.keys):
            cost = units(item_size(before), KB) + units(item_size(after), KB)
        elif before != after:
            cost = units(item_size(after), KB)
        else:
            continue
        indexes[index.name] = cost
    return table, indexes


@dataclass
class Capacity:
    """Request units by table ("Table" or "Table/index")."""

    write: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    read: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def write_units(self) -> float:
        return float(sum(self.write.values()))

    @property
    def read_units(self) -> float:
        return float(sum(self.read.values()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "write_units": self.write_units,
            "read_units": self.read_units,
            "write_units_by_table": dict(sorted(self.write.items())),
            "read_units_by_table": dict(sorted(self.read.items())),
        }


_WRITES = {"PutItem", "UpdateItem", "DeleteItem"}


class CapacityMeter:
    """Item-aware on-demand request units for everything written or read while observing (see the
    module docstring).

    Writes need the item before and after: the meter keeps a shadow copy of every table (scanned
    when it starts, then moved by each write it observes: a put's item, an update's ALL_NEW reply
    (PynamoDB always asks for it), a delete). An update that did not ask for the new item is read
    back once with GetItem, a request the counter does not count."""

    def __init__(self, counter: RequestCounter, specs: Mapping[str, TableSpec]) -> None:
        self.counter = counter
        self.specs = dict(specs)
        self.capacity = Capacity()
        self.items: dict[str, dict[str, dict[str, Any]]] = {}  # table -> key -> item
        self._lock = threading.RLock()
        self._dynamodb = boto3.client("dynamodb")

    @contextlib.contextmanager
    def observing(self) -> Iterator[CapacityMeter]:
        """Scans every table (uncounted), then meters until the block ends."""
        with self.counter.uncounted():
            paginator = self._dynamodb.get_paginator("scan")
            for table in self.specs:
                self.items[table] = {
                    self._key_text(table, item): item
                    for page in paginator.paginate(TableName=table, ConsistentRead=True)
                    for item in page["Items"]
                }
        self.counter.observers.append(self.observe)
        try:
            yield self
        finally:
            self.counter.observers.remove(self.observe)

    def take(self) -> Capacity:
        with self._lock:
            capacity, self.capacity = self.capacity, Capacity()
        return capacity

    def observe(self, call: Call) -> None:
        if call.service != "dynamodb" or call.parsed is None:
            return
        body = call.json_body()
        with self._lock:
            if call.error_code == "ConditionalCheckFailedException" and call.operation in _WRITES:
                # A refused condition still costs the write, by the size of the item it looked at.
                old = self._item(body["TableName"], body.get("Key") or body.get("Item") or {})
                self.capacity.write[body["TableName"]] += units(item_size(old), KB)
            elif call.error_code is None:
                self._observe_success(call.operation, body, call.parsed)

    def _observe_success(self, operation: str, body: dict[str, Any], reply: Mapping[str, Any]) -> None:
        if operation == "PutItem":
            self._write(body["TableName"], body["Item"], body["Item"])
        elif operation == "UpdateItem":
            new = reply.get("Attributes") if body.get("ReturnValues") == "ALL_NEW" else None
            self._write(body["TableName"], body["Key"], new if new is not None else self._read_back(body))
        elif operation == "DeleteItem":
            self._write(body["TableName"], body["Key"], None)
        elif operation == "BatchWriteItem":
            unprocessed = reply.get("UnprocessedItems") or {}
            for table, requests in body.get("RequestItems", {}).items():
                left = [json.dumps(r, sort_keys=True, default=str) for r in unprocessed.get(table, [])]
                for request in requests:
                    if json.dumps(request, sort_keys=True) in left:
                        continue
                    if "PutRequest" in request:
                        item = request["PutRequest"]["Item"]
                        self._write(table, item, item)
                    else:
                        self._write(table, request["DeleteRequest"]["Key"], None)
        elif operation == "TransactWriteItems":
            for entry in body.get("TransactItems", []):
                for kind, details in entry.items():
                    table = details["TableName"]
                    if kind == "ConditionCheck":
                        self.capacity.write[table] += 2 * units(item_size(self._item(table, details["Key"])), KB)
                    elif kind == "Put":
                        self._write(table, details["Item"], details["Item"], factor=2)
                    elif kind == "Delete":
                        self._write(table, details["Key"], None, factor=2)
                    else:
                        self._write(table, details["Key"], self._read_back(details), factor=2)
        else:
            self._observe_read(operation, body, reply)

    def _observe_read(self, operation: str, body: dict[str, Any], reply: Mapping[str, Any]) -> None:
        read = self.capacity.read
        factor = 1.0 if body.get("ConsistentRead") else 0.5
        if operation == "GetItem":
            read[body["TableName"]] += factor * units(item_size(reply.get("Item")), READ_UNIT_BYTES)
        elif operation in ("Query", "Scan"):
            # Items a filter drops are read (and billed) too; the reply no longer shows them.
            where = body["TableName"] + (f"/{body['IndexName']}" if body.get("IndexName") else "")
            size = sum(item_size(item) for item in reply.get("Items", []))
            read[where] += (0.5 if body.get("IndexName") else factor) * units(size, READ_UNIT_BYTES)
        elif operation == "BatchGetItem":
            for table, request in body.get("RequestItems", {}).items():
                got = reply.get("Responses", {}).get(table, [])
                table_factor = 1.0 if request.get("ConsistentRead") else 0.5
                missing = max(0, len(request.get("Keys", [])) - len(got))
                read[table] += table_factor * (sum(units(item_size(item), READ_UNIT_BYTES) for item in got) + missing)
        elif operation == "TransactGetItems":
            for entry, item in zip(body.get("TransactItems", []), reply.get("Responses", []), strict=False):
                table = entry.get("Get", {}).get("TableName", "?")
                read[table] += 2 * units(item_size(item.get("Item")), READ_UNIT_BYTES)

    def _write(self, table: str, key: Mapping[str, Any], new: Mapping[str, Any] | None, factor: int = 1) -> None:
        spec = self.specs.get(table)
        if spec is None:
            return
        text = self._key_text(table, key)
        old = self.items.setdefault(table, {}).get(text)
        table_units, index_units = write_units(spec, old, new)
        self.capacity.write[table] += factor * table_units
        for index, cost in index_units.items():
            self.capacity.write[f"{table}/{index}"] += factor * cost
        if new is None:
            self.items[table].pop(text, None)
        else:
            self.items[table][text] = dict(new)

    def _item(self, table: str, key: Mapping[str, Any]) -> dict[str, Any] | None:
        return self.items.get(table, {}).get(self._key_text(table, key))

    def _read_back(self, details: Mapping[str, Any]) -> dict[str, Any] | None:
        with self.counter.uncounted():
            reply = self._dynamodb.get_item(TableName=details["TableName"], Key=details["Key"], ConsistentRead=True)
        item: dict[str, Any] | None = reply.get("Item")
        return item

    def _key_text(self, table: str, item: Mapping[str, Any]) -> str:
        keys = self.specs[table].keys if table in self.specs else tuple(sorted(item))
        return json.dumps([item.get(key) for key in keys], sort_keys=True, default=str)


# ---------------------------------------------------------------- the embedded AWS


class EmbeddedWorld:
    """An embedded AWS with this process pointed at it (environment, boto3, PynamoDB models)."""

    def __init__(self) -> None:
        self.server = EmbeddedAws()
        self._stack = contextlib.ExitStack()
        self.settings: Settings | None = None
        self.counter = RequestCounter()
        self._dynamodb: Any = None

    def __enter__(self) -> EmbeddedWorld:
        self._stack.enter_context(self.server)
        self._stack.enter_context(environment(self.server.environment()))
        self._stack.enter_context(environment({"POWERTOOLS_LOG_LEVEL": "WARNING"}))
        self._stack.enter_context(self.counter.installed())
        self._stack.callback(self._unbind)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    @property
    def pid(self) -> int:
        return self.server.pid

    def fresh(self) -> Settings:
        """Empty tables: the server reset, the template's resources recreated, the functions'
        settings (signing key read from its secret, as the functions do) and models bound."""
        from core.secrets import resolve_signing_key
        from core.settings import Settings
        from core.storage.models import bind_tables

        self.server.reset()
        created = create_resources(boto3.Session())
        self._stack.enter_context(environment(environment_for(created, ["DispatcherFunction"])))
        settings = resolve_signing_key(Settings(), boto3.client("secretsmanager"))
        if self.settings is None:  # same endpoint and table names for the server's life: bind once
            bind_tables(settings)
            connect_models()
        self.settings = settings
        return settings

    @property
    def dynamodb(self) -> Any:
        """One client for the server's life, as a warm Lambda container has one."""
        if self._dynamodb is None:
            self._dynamodb = dynamodb_client()
        return self._dynamodb

    def _unbind(self) -> None:
        from core.settings import Settings
        from core.storage.models import bind_tables

        bind_tables(Settings())


def connect_models() -> None:
    """Builds every PynamoDB model's botocore client now. PynamoDB makes one per model (its own
    botocore session, loading the DynamoDB service model: ~0.2 s each), on first use; a warm Lambda
    container has them all, so no measured run should pay for one."""
    from core.storage.models import ALL_MODELS

    for model in ALL_MODELS.values():
        _ = model._get_connection().connection.client


# ---------------------------------------------------------------- seeding


@dataclass
class Campaigns:
    """Queued, planned tasks on one service: user id -> task id (one task per user)."""

    service_id: str
    tasks: dict[str, str]

    @property
    def user_of(self) -> dict[str, str]:
        return {task: user for user, task in self.tasks.items()}


def seed_campaigns(
    settings: Settings, service_id: str, recipients: Mapping[str, int], *, sending_rate: float
) -> Campaigns:
    """One service, then per user a sender, a template, contacts and one task planned in-process
    (tests/support/dispatching.World), and the scheduler started."""
    from core.clock import SystemClock
    from tests.support.dispatching import World, start_scheduler

    clock = SystemClock()
    world = World(settings, clock)
    world.service(service_id, sending_rate=sending_rate, daily_quota=100_000_000)
    tasks = {user: world.campaign(user, count, [service_id], quota=count * 10) for user, count in recipients.items()}
    start_scheduler(clock.now())
    return Campaigns(service_id, tasks)


def set_sending_rate(service_id: str, seconds_between_sends: float) -> None:
    from core.storage.models import EmailServiceModel

    EmailServiceModel(service_id).update(actions=[EmailServiceModel.sending_rate.set(seconds_between_sends)])


def queued_left(task_ids: list[str]) -> int:
    from core.storage.models import TaskModel

    return sum(int(TaskModel.get(task_id, consistent_read=True).counts.queued or 0) for task_id in task_ids)


# ---------------------------------------------------------------- SES hooks


@dataclass(frozen=True)
class Send:
    at: float  # time.time() as the request left
    task_id: str
    recipient: str


class SendLog:
    """When each SendEmail left this process, and for which task (its `task_id` email tag)."""

    def __init__(self) -> None:
        self.sends: list[Send] = []
        self._lock = threading.Lock()

    def hook(self, request: Any, **_: Any) -> None:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            body = {}
        tags = {tag.get("Name"): tag.get("Value") for tag in body.get("EmailTags", [])}
        recipients = body.get("Destination", {}).get("ToAddresses", [""])
        with self._lock:
            self.sends.append(Send(time.time(), str(tags.get("task_id", "")), str(recipients[0])))

    def take(self) -> list[Send]:
        with self._lock:
            sends, self.sends = self.sends, []
        return sorted(sends, key=lambda send: send.at)


def ses_client(log: SendLog | None = None, latency: float = 0.0) -> Any:
    """An SES v2 client configured as the dispatcher Lambda's (no botocore retries: the dispatcher
    classifies SES errors itself), optionally logging each send and sleeping `latency` seconds
    before it (simulated network latency, on the sending thread as real latency would be)."""
    client = boto3.client("sesv2", config=Config(retries={"mode": "standard", "max_attempts": 1}))
    if latency > 0:

        def wait(**_: Any) -> None:
            time.sleep(latency)

        client.meta.events.register("before-send.sesv2.SendEmail", wait)
    if log is not None:
        client.meta.events.register("before-send.sesv2.SendEmail", log.hook)
    return client


def dynamodb_client() -> Any:
    """Configured as the dispatcher Lambda's."""
    return boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 5}))


# ---------------------------------------------------------------- the dispatcher in-process


DEFAULT_BUDGET_SECONDS = 240.0  # the template's DispatcherBudgetSeconds default


def dispatcher_deps(settings: Settings, ses: Any, dynamodb: Any, budget_seconds: float) -> DispatcherDeps:
    """DispatcherDeps as functions/dispatcher/dispatcher_handler.deps_for builds them; anything it
    leaves out keeps its default, as in production."""
    from core.clock import SystemClock
    from core.dispatch.dispatcher import DispatcherDeps

    return DispatcherDeps(
        clock=SystemClock(),
        ses=ses,
        dynamodb=dynamodb,
        subtasks_table=settings.subtasks_table,
        owner=f"bench:{uuid.uuid4().hex[:8]}",
        budget_seconds=budget_seconds,
        lease_seconds=budget_seconds + 15,
        max_retries=settings.max_retries,
        retry_delay=settings.retry_delay_seconds,
        batch_size=settings.batch_size,
        unsubscribe_base_url="https://api.example.com/v1/unsubscribe",
        unsubscribe_signing_key=settings.unsubscribe_signing_key,
        render_budget_seconds=settings.render_budget_ms / 1000,
    )


@dataclass
class DispatchRun:
    """Invocations of one service's dispatcher until it ran out of work (or a limit)."""

    invocation_seconds: list[float] = field(default_factory=list)  # each one's wall clock
    reports: list[DispatchReport] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    measure: Measure = field(default_factory=Measure)

    @property
    def sent(self) -> int:
        return sum(report.sent for report in self.reports)

    @property
    def lambda_seconds(self) -> float:
        return sum(self.invocation_seconds)

    @property
    def sending_seconds(self) -> float:
        """First SendEmail to last (0 with fewer than two)."""
        if len(self.sends) < 2:
            return 0.0
        return self.sends[-1].at - self.sends[0].at


def run_dispatcher(
    world: EmbeddedWorld,
    service_id: str,
    *,
    ses: Any,
    log: SendLog,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    max_invocations: int = 100,
    until_sent: int | None = None,
) -> DispatchRun:
    """Invokes the dispatcher for the service one invocation after another (a tick each) until
    `until_sent` emails went out, or (without `until_sent`) one stops for another reason than its
    spent budget, or one sends nothing and stops for another reason, or `max_invocations` ran."""
    from core.dispatch.dispatcher import dispatch_service

    assert world.settings is not None, "call world.fresh() first"
    run = DispatchRun()
    log.take()
    with run.measure.measure(world.pid):
        for _ in range(max_invocations):
            deps = dispatcher_deps(world.settings, ses, world.dynamodb, budget_seconds)
            started = time.perf_counter()
            report = dispatch_service(service_id, deps)
            run.invocation_seconds.append(time.perf_counter() - started)
            run.reports.append(report)
            if until_sent is not None and run.sent >= until_sent:
                break
            if report.stop_reason.value != "budget_spent" and (until_sent is None or report.sent == 0):
                break
    run.sends = log.take()
    return run


def warm_up(world: EmbeddedWorld) -> None:
    """Imports, the render worker and the clients' first connections are not what we measure: one
    small run on fresh tables first."""
    settings = world.fresh()
    seed_campaigns(settings, "svc_warm_up", {"warm-up": 5}, sending_rate=0.0001)
    log = SendLog()
    run_dispatcher(world, "svc_warm_up", ses=ses_client(log), log=log)


def achieved_rate(sends: list[Send]) -> float:
    """Sends per second between the first and the last send."""
    if len(sends) < 2:
        return math.nan
    return (len(sends) - 1) / (sends[-1].at - sends[0].at)


def jain_index(counts: list[float]) -> float:
    """Jain's fairness index: 1 when every count is equal, 1/n when one party got everything."""
    total, squares = sum(counts), sum(value * value for value in counts)
    if not counts or squares == 0:
        return math.nan
    return total * total / (len(counts) * squares)


# ---------------------------------------------------------------- results


PRIOR_RESULTS_VARIABLE = "BENCH_PRIOR_RESULTS"  # set by bench/__main__.py for each child


def prior_result(name: str, quick: bool) -> dict[str, Any] | None:
    """What benchmark `name` measured earlier in this `python -m bench` run (same quick flag), so a
    later benchmark can build on its runs instead of repeating them; None outside such a run."""
    path = os.environ.get(PRIOR_RESULTS_VARIABLE)
    if not path:
        return None
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    result = results.get(name)
    if not isinstance(result, dict) or result.get("status") != "ok" or bool(result.get("quick")) != quick:
        return None
    return result


def row(measure: str, figure: str, target: str = "report", met: bool | None = None) -> dict[str, Any]:
    """One line of the printed table."""
    return {"measure": measure, "figure": figure, "target": target, "met": met}


def pct(value: float) -> str:
    return f"{value:.1%}" if math.isfinite(value) else "n/a"
