"""Shared fixtures: AWS is in-process moto with every table and queue built from template.yaml."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_SERVICE_NAME": "edm-scheduler-tests",
    }
)
for _variable in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
    os.environ.pop(_variable, None)

import botocore.loaders  # noqa: E402
import botocore.session  # noqa: E402
from moto import mock_aws  # noqa: E402
from moto.core.botocore_stubber import BotocoreStubber  # noqa: E402

from core.secrets import resolve_signing_key  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage.models import bind_tables  # noqa: E402
from local_runner import moto_speedups  # noqa: E402
from local_runner.apigw import claims_for, rest_event  # noqa: E402
from local_runner.http_api import routes_from_template  # noqa: E402
from local_runner.template import create_resources, environment_for, load_template  # noqa: E402

moto_speedups.install()


def _one_request_at_a_time() -> None:
    """In-process moto (mock_aws) answers on the caller's thread and is not thread-safe: concurrent
    writes into one new partition can each create it and one set of items is lost (a 2,500-row
    import written 8 transactions at a time once kept 2,494 contacts). The embedded server is
    single-threaded for the same reason; here one lock makes each in-process request atomic, as a
    request is atomic in DynamoDB. Threads still overlap everywhere else (their own code, waits)."""
    lock = threading.RLock()
    process_request = BotocoreStubber.process_request

    def atomic(self: BotocoreStubber, request: Any) -> Any:
        with lock:
            return process_request(self, request)

    BotocoreStubber.process_request = atomic  # type: ignore[method-assign]


_one_request_at_a_time()


class _SharedModelCache:
    """botocore's service models (the JSON files it ships), parsed once per test process instead of
    once per botocore session: every test makes fresh sessions (PynamoDB's connections, bound anew
    each test; boto3 Sessions), and parsing their models again was a third of a typical API test's
    CPU. Read-only data, shared as one session already shares it between its clients; keyed by the
    loader's search paths too, as boto3's loaders see more files (resources) than botocore's."""

    entries: dict[tuple[Any, ...], Any] = {}

    def __init__(self, loader: botocore.loaders.Loader) -> None:
        self._loader = loader

    def _key(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        return (tuple(self._loader.search_paths), *key)

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return self._key(key) in self.entries

    def __getitem__(self, key: tuple[Any, ...]) -> Any:
        return self.entries[self._key(key)]

    def __setitem__(self, key: tuple[Any, ...], value: Any) -> None:
        self.entries[self._key(key)] = value


def _create_loader(search_path_string: str | None = None) -> botocore.loaders.Loader:
    loader = botocore.loaders.create_loader(search_path_string)
    loader._cache = _SharedModelCache(loader)  # what botocore's @instance_cache reads and writes
    return loader


botocore.session.create_loader = _create_loader  # what each new botocore session calls

TESTS = Path(__file__).resolve().parent
# Every test is marked by its folder (pyproject.toml registers them; `slow` is marked by hand).
FOLDER_MARKERS = {
    "unit": "unit",
    "integration": "integration",
    "concurrency": "concurrency",
    "e2e": "e2e",
    "reliability": "reliability",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.resolve()
        marker = FOLDER_MARKERS.get(path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else "")
        if marker is None:
            raise pytest.UsageError(f"{item.nodeid}: not in a tier folder; add its folder to FOLDER_MARKERS")
        item.add_marker(marker)


# The reliability suite's request counts (tests/reliability/test_openapi_contract.py), printed at the
# end: counted in this process, or under pytest-xdist in the workers, which hand them to the
# controller (the only process that prints the summary) through `workeroutput`.
_RELIABILITY_COUNTS = "reliability_requests"
_counts_from_workers: Counter[str] = Counter()


def _reliability_counts() -> Counter[str]:
    contract = sys.modules.get("tests.reliability.test_openapi_contract")
    return Counter(getattr(contract, "examples_run", None) or {})


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)  # set on an xdist worker only
    if workeroutput is not None:
        workeroutput[_RELIABILITY_COUNTS] = dict(_reliability_counts())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _counts_from_workers.update(getattr(node, "workeroutput", {}).get(_RELIABILITY_COUNTS, {}))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many requests the contract suite sent per operation (stateless and stateful)."""
    counts = _reliability_counts() + _counts_from_workers
    if counts:
        terminalreporter.write_sep("-", f"reliability: {sum(counts.values())} requests over {len(counts)} operations")
        for label, count in sorted(counts.items()):
            terminalreporter.write_line(f"{count:6d}  {label}")


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Whatever a test sets in os.environ (an in-process local runner points AWS_ENDPOINT_URL at its
    embedded AWS) is undone after it, so no later test on the same worker sees it."""
    before = dict(os.environ)
    yield
    for key in os.environ.keys() - before.keys():
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@dataclass
class FakeClock:
    """Deterministic clock: `sleep` advances time instantly."""

    current: float = 1_796_000_000.0  # a fixed instant (2026-11-30 UTC)
    slept: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.current += max(seconds, 0.0)

    def advance(self, seconds: float) -> None:
        self.current += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def resource_maker() -> tuple[boto3.Session, dict[str, Any]]:
    """A boto3 Session and template.yaml, for making the template's resources in every test's fresh
    AWS: made once (per xdist worker), as a new Session reloads every service model it uses, which
    cost more than the rest of the `aws` fixture. It holds no state of a test's AWS."""
    return boto3.Session(), load_template()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, resource_maker: tuple[boto3.Session, dict[str, Any]]) -> Iterator[Settings]:
    """A fresh in-process AWS with the template's resources; yields the functions' settings."""
    with mock_aws():
        created = create_resources(*resource_maker)
        # The API function's own variables too (dispatcher ARN, schedule group, ...).
        for key, value in environment_for(created, functions=("ApiFunction",)).items():
            monkeypatch.setenv(key, value)
        # As the functions do at cold start: the signing key from the template's secret.
        settings = resolve_signing_key(Settings(), boto3.client("secretsmanager"))
        bind_tables(settings)
        yield settings


@dataclass
class ApiReply:
    status: int
    body: Any
    headers: dict[str, str]


_ROUTES = routes_from_template(load_template())


class ApiClient:
    """Calls the API Lambda handler in-process with API Gateway REST proxy events."""

    def __init__(self, clock: FakeClock) -> None:
        import api_context
        import api_handler

        api_context.deps.cache_clear()
        self._deps = api_context.deps()
        self._deps.clock = clock
        self._handler = api_handler.lambda_handler

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        user: str | None = "admin",
        groups: list[str] | None = None,
        query: str = "",
        claims: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> ApiReply:
        if claims is None and user is not None:
            default_groups = ["admins"] if user == "admin" else []
            claims = claims_for(user, groups if groups is not None else default_groups)
        # The template's resource and path parameters, as API Gateway (and the local gateway) pass them.
        resource, parameters = next(
            ((route.resource, found) for route in _ROUTES if (found := route.match(method, path)) is not None),
            (None, None),
        )
        event = rest_event(
            method,
            path,
            resource=resource,
            path_parameters=parameters or None,
            body=body,
            claims=claims,
            query=query,
            headers=headers,
        )
        reply = self._handler(event, _LambdaContext())
        text = reply.get("body") or ""
        try:
            parsed = json.loads(text) if text else None
        except json.JSONDecodeError:
            parsed = text
        # API Gateway merges both header maps; Powertools' resolver answers in multiValueHeaders.
        headers = {name: values[-1] for name, values in (reply.get("multiValueHeaders") or {}).items() if values}
        headers.update(reply.get("headers") or {})
        return ApiReply(status=reply["statusCode"], body=parsed, headers=headers)

    def get(self, path: str, **kwargs: Any) -> ApiReply:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> ApiReply:
        return self.call("POST", path, body, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> ApiReply:
        return self.call("PUT", path, body, **kwargs)

    def patch(self, path: str, body: Any = None, **kwargs: Any) -> ApiReply:
        return self.call("PATCH", path, body, **kwargs)


class _LambdaContext:
    function_name = "ApiFunction"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
    aws_request_id = "test-request"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


@pytest.fixture
def api(aws: Settings, clock: FakeClock) -> ApiClient:
    return ApiClient(clock)


@pytest.fixture
def planner(aws: Settings, clock: FakeClock) -> Any:
    """Drives the planner Lambda through its SQS queue, with the test's clock injected."""
    import planner_handler

    from tests.support.planning import PlannerDriver

    planner_handler.runtime.cache_clear()
    planner_handler.runtime().clock = clock
    return PlannerDriver(aws)
