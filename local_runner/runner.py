"""The whole system on one machine: an embedded AWS (single-threaded moto server in a child process),
every resource the template declares, the API on http://127.0.0.1:3000, the planner fed from its
queue, every ENABLED schedule fired at its rate (the embedded Scheduler's and those the template
declares on its functions), and SES's accepted mail in `outbox/`.

The handlers run in this process, unchanged: they reach the embedded AWS through the standard
`AWS_ENDPOINT_URL`, set (with the template's function environment) before they are imported.

>>> with LocalRunner(RunnerConfig(port=0)) as runner:
...     print(runner.api_url)
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

from local_runner.functions import (
    FunctionSpec,
    Handler,
    LocalContext,
    api_functions,
    function_specs,
    load_handler,
)
from local_runner.http_api import LocalApiGateway
from local_runner.moto_server import EmbeddedAws, aws_environment
from local_runner.ses_events import TOPIC_LOGICAL_ID as SES_EVENTS_TOPIC
from local_runner.ses_events import SesMailboxSimulator
from local_runner.template import (
    REPO_ROOT,
    CreatedResources,
    create_resources,
    declared_schedules,
    environment_for,
    load_template,
)
from local_runner.triggers import (
    OutboxWriter,
    PollingThread,
    QueueMapping,
    QueueTrigger,
    ScheduleFirer,
    clear_outbox,
    queue_mappings,
)

log = logging.getLogger("local_runner")

DEFAULT_OUTBOX = REPO_ROOT / "outbox"
# How long Ctrl-C waits for running invocations (a dispatcher can run for its 240 s budget; it is cut
# off as a Lambda at its timeout would be: whatever it had claimed is reported `unknown` next time).
STOP_GRACE_SECONDS = 3.0
# Seconds between fires of the schedules template.yaml declares on functions (the health check's is
# an hour): shorter, a local run sees them, e.g. `LOCAL_TEMPLATE_SCHEDULE_SECONDS=30 make demo`.
TEMPLATE_SCHEDULE_SECONDS_ENV = "LOCAL_TEMPLATE_SCHEDULE_SECONDS"


# Background work that AWS runs on many concurrent invocations (SES events, CSV imports) runs one
# batch at a time here: the embedded AWS is one single-threaded server, and twenty event batches in
# flight would queue ahead of every dispatcher request and slow the pace the runner is there to show.
ONE_BATCH_AT_A_TIME = frozenset({"EventsFunction", "ImportFunction"})


def _locally(mapping: QueueMapping) -> QueueMapping:
    return replace(mapping, concurrency=1) if mapping.function in ONE_BATCH_AT_A_TIME else mapping


def _template_schedule_seconds() -> float | None:
    text = os.environ.get(TEMPLATE_SCHEDULE_SECONDS_ENV, "").strip()
    if not text:
        return None
    seconds = float(text)
    if seconds <= 0:
        raise ValueError(f"{TEMPLATE_SCHEDULE_SECONDS_ENV} must be a positive number of seconds, not {text!r}")
    return seconds


@dataclass(frozen=True)
class RunnerConfig:
    host: str = "127.0.0.1"
    port: int = 3000  # sam local start-api's port; 0 picks a free one
    aws_port: int | None = None  # the moto server's; None picks a free one
    outbox: Path = DEFAULT_OUTBOX
    log_level: str = "INFO"  # the handlers' POWERTOOLS_LOG_LEVEL
    # Function settings over the template's (as `sam local --env-vars`), e.g. a short
    # DISPATCHER_BUDGET_SECONDS to watch hand-offs in a test or a benchmark.
    environment: Mapping[str, str] = field(default_factory=dict)
    # Whether SES's events about each accepted email are published (local_runner/ses_events.py);
    # off for a run that measures the pace alone (they share the embedded AWS's one thread).
    simulate_ses_events: bool = True
    # The period of the template's own schedules (None: their rate); default from the environment.
    template_schedule_seconds: float | None = field(default_factory=_template_schedule_seconds)


def prepare_functions(
    aws_endpoint: str, functions: Iterable[str], extra: Mapping[str, str] | None = None
) -> CreatedResources:
    """Points this process's AWS clients at the embedded AWS there, creates the template's resources
    on it (idempotent: a running runner's stay) and sets the functions' template environment, plus
    `extra`. One process holds every function, so each sees every function's variables (no name
    differs between them today); in AWS each gets only its own."""
    os.environ.update(aws_environment(aws_endpoint))
    os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    created = create_resources(boto3.Session())
    os.environ.update({**environment_for(created, functions=functions), **(extra or {})})
    return created


def _shows_info(level: str) -> bool:
    """Whether the handlers' log level lets INFO lines through (an unknown level name: Powertools' INFO)."""
    number = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    return number <= logging.INFO


class FunctionHost:
    """The template's functions, imported once (warm) and invoked with a fresh context each time."""

    def __init__(self, specs: dict[str, FunctionSpec], one_event_at_a_time: set[str]) -> None:
        self.specs = specs
        self._handlers: dict[str, Handler] = {}
        self._import_lock = threading.Lock()
        self._serial = {name: threading.Lock() for name in one_event_at_a_time}
        self.stopping = False  # set at shutdown: invocations cut off then fail quietly

    def handler(self, name: str) -> Handler:
        with self._import_lock:
            if name not in self._handlers:
                self._handlers[name] = load_handler(self.specs[name])
            return self._handlers[name]

    def invoke(self, name: str, event: dict[str, Any]) -> Any:
        """Runs the function on the event; an exception is logged and re-raised (the caller acts as
        the AWS service would on a failed invocation)."""
        handler = self.handler(name)
        context = LocalContext(self.specs[name])
        try:
            with self._serial.get(name) or contextlib.nullcontext():
                return handler(event, context)
        except Exception:
            if self.stopping:
                raise
            log.error("%s failed (request %s):\n%s", name, context.aws_request_id, traceback.format_exc())
            raise


class LocalRunner:
    def __init__(self, config: RunnerConfig | None = None) -> None:
        self.config = config or RunnerConfig()
        self.template = load_template()
        self.aws: EmbeddedAws | None = None
        self.created: CreatedResources | None = None
        self.functions = FunctionHost(function_specs(self.template), api_functions(self.template))
        self.gateway: LocalApiGateway | None = None
        self.outbox: OutboxWriter | None = None
        self.scheduler: ScheduleFirer | None = None
        self.ses_simulator: SesMailboxSimulator | None = None
        self._pollers: list[PollingThread] = []

    @property
    def api_url(self) -> str:
        assert self.gateway is not None, "the runner is not started"
        return self.gateway.url

    @property
    def aws_endpoint(self) -> str:
        assert self.aws is not None, "the runner is not started"
        return self.aws.endpoint_url

    def __enter__(self) -> LocalRunner:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalRunner:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        config = self.config
        # The API's port first: a port in use fails before anything else starts, and the
        # unsubscribe links the functions write must point at this API.
        self.gateway = LocalApiGateway(self.template, self.functions.invoke, host=config.host, port=config.port)
        # Always loopback: the embedded AWS has no authentication.
        self.aws = EmbeddedAws(config.aws_port, host="127.0.0.1").start()
        self.created = prepare_functions(
            self.aws.endpoint_url,
            self.functions.specs,
            {
                "POWERTOOLS_LOG_LEVEL": config.log_level,
                "POWERTOOLS_TRACE_DISABLED": "1",
                "POWERTOOLS_METRICS_NAMESPACE": "edm-scheduler-local",
                # Metrics are EMF lines on stdout, like the functions' log lines: shown at INFO,
                # left out at quieter levels (the demo's progress display).
                "POWERTOOLS_METRICS_DISABLED": "false" if _shows_info(config.log_level) else "true",
                "UNSUBSCRIBE_BASE_URL": f"{self.gateway.url}/unsubscribe",
                **config.environment,
            },
        )
        for name in self.functions.specs:  # import now: a broken handler fails the start, not a request
            self.functions.handler(name)

        config.outbox.mkdir(parents=True, exist_ok=True)
        clear_outbox(config.outbox)
        session = boto3.Session()
        client_config = Config(retries={"mode": "standard", "max_attempts": 3})
        self._pollers = [
            QueueTrigger(session.client("sqs", config=client_config), _locally(mapping), self.functions.invoke)
            for mapping in queue_mappings(self.template, self.created)
        ]
        self.outbox = OutboxWriter(self.aws, config.outbox)
        self._pollers.append(self.outbox)
        topic_arn = self.created.topic_arns.get(SES_EVENTS_TOPIC)
        if topic_arn is not None and config.simulate_ses_events:  # what real SES would report
            self.ses_simulator = SesMailboxSimulator(self.aws, session.client("sns", config=client_config), topic_arn)
            self._pollers.append(self.ses_simulator)
        self.scheduler = ScheduleFirer(
            session.client("scheduler", config=client_config),
            self.functions.specs,
            self.functions.invoke,
            declared=declared_schedules(self.template),
            template_period=config.template_schedule_seconds,
        )
        self._pollers.append(self.scheduler)
        for poller in self._pollers:
            poller.start()
        self.gateway.start()

    def stop(self) -> None:
        """Stops serving and firing, gives running invocations a moment, copies the last mail to the
        outbox and stops the embedded AWS. Idempotent."""
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        for poller in self._pollers:
            if poller is not self.outbox:
                poller.stop()
        invokers = [poller for poller in self._pollers if isinstance(poller, ScheduleFirer | QueueTrigger)]
        if not all(invoker.wait_for_invocations(STOP_GRACE_SECONDS) for invoker in invokers):
            log.warning("stopping with invocations still running (cut off as at a Lambda timeout)")
        self.functions.stopping = True
        if self.outbox is not None:
            self.outbox.stop()
            with contextlib.suppress(OSError):
                self.outbox.poll_once()  # whatever was sent during the grace period
        self._pollers = []
        if self.aws is not None:
            self.aws.stop()
            self.aws = None
