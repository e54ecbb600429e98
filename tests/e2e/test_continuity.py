"""Continuous sending on the local runner, as `make serve` runs it: the scheduler start wakes the
service at once, each dispatcher hands its lease to a successor through the wake-up queue, schedule
ticks fire at random seconds, and extra ticks (a doubled fire) are no-ops. Short budgets (3 s) make
hand-offs frequent; the pace is measured from the subtasks' `sent_at`."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import boto3
import pytest

from core.settings import Settings, load_settings
from core.storage.models import SubtaskModel, bind_tables
from local_runner.demo import Api
from local_runner.runner import LocalRunner, RunnerConfig

INTERVAL = 0.1  # seconds between sends (10/s)
RECIPIENTS = 120
BUDGET = "3"


def _cold_start_every_function() -> None:
    """The runner hosts the handlers in this process: handler modules other tests imported keep
    their cold-start state (clients, bound tables) unless dropped, as a fresh container would."""
    for module, cached in (("api_context", "deps"), ("planner_handler", "runtime"), ("dispatcher_handler", "runtime")):
        if module in sys.modules:
            getattr(sys.modules[module], cached).cache_clear()
    load_settings.cache_clear()
    bind_tables(Settings())


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[LocalRunner]:
    config = RunnerConfig(
        port=0,
        outbox=tmp_path / "outbox",
        log_level="WARNING",
        environment={"DISPATCHER_BUDGET_SECONDS": BUDGET, "DISPATCHER_HANDOFF_LEAD_SECONDS": "1"},
        simulate_ses_events=False,  # the pace alone: SES's events would share the embedded AWS's thread
    )
    environment = dict(os.environ)
    _cold_start_every_function()
    try:
        with LocalRunner(config) as running:
            yield running
    finally:
        os.environ.clear()
        os.environ.update(environment)  # the runner pointed this process at its embedded AWS
        _cold_start_every_function()


def _campaign(api: Api) -> tuple[str, str]:
    service_id = str(
        api.call(
            "POST",
            "/api/services",
            {"name": "steady", "region": "us-east-1", "sending_rate": INTERVAL, "daily_quota": 10_000},
        )["service_id"]
    )
    api.call("POST", "/api/users", {"user_id": "alice", "email": "alice@example.com", "quota": 1_000})
    api.call("PUT", "/api/users/alice/services", {"service_ids": [service_id]})
    sender = api.call("POST", "/api/senders", {"email": "news@steady.example.com", "name": "News"}, as_user="alice")
    rows = [{"email": f"reader{n}@example.org", "name": f"Reader {n}", "tags": ["all"]} for n in range(RECIPIENTS)]
    api.call("POST", "/api/contacts", {"contacts": rows}, as_user="alice")
    template = api.call(
        "POST",
        "/api/templates",
        {"name": "t", "subject": "Hi {{ name }}", "html": "<p>Hi</p>", "text": "Hi"},
        as_user="alice",
    )
    task = api.call(
        "POST",
        "/api/tasks",
        {
            "name": "steady",
            "sender_id": sender["sender_id"],
            "templates": [template["template_id"]],
            "recipient_rule": {"type": "tag_based", "include_tags": ["all"], "exclude_tags": []},
        },
        as_user="alice",
    )
    return service_id, str(task["task_id"])


def _wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_sending_continues_across_hand_offs_at_the_pace_with_doubled_ticks(runner: LocalRunner) -> None:
    api = Api(runner.api_url)
    service_id, task_id = _campaign(api)
    _wait_for(lambda: api.call("GET", f"/api/tasks/{task_id}", as_user="alice")["status"] == "queued", 30)

    started = time.time()
    api.call("POST", "/api/scheduler/start")
    # Doubled ticks while it sends: each finds the lease held and does nothing
    extra = [
        threading.Timer(delay, runner.functions.invoke, args=("DispatcherFunction", {"service_id": service_id}))
        for delay in (2.0, 2.05, 6.5)
    ]
    for timer in extra:
        timer.start()
    _wait_for(lambda: api.call("GET", f"/api/tasks/{task_id}", as_user="alice")["status"] == "completed", 60)
    for timer in extra:
        timer.join()

    boto3.setup_default_session()
    sent = sorted(
        (s for s in SubtaskModel.scan() if s.task_id == task_id and s.status == "sent"), key=lambda s: float(s.sent_at)
    )
    times = [float(s.sent_at) for s in sent]
    gaps = [b - a for a, b in pairwise(times)]
    assert len(sent) == RECIPIENTS
    assert times[0] - started <= 3.0, "the start woke the service at once, not at its first tick"
    assert min(gaps) >= INTERVAL - 0.005, "the pace was never exceeded, across hand-offs too"
    assert max(gaps) <= 2 * INTERVAL + 1.0, gaps
    invocations = {s.claim_owner for s in sent}
    assert len(invocations) >= 3, "several invocations handed the lease on"
    achieved = (len(times) - 1) / (times[-1] - times[0])
    assert achieved >= 0.9 / INTERVAL
