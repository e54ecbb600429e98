"""The dispatcher handler publishes each invocation's metrics (core.dispatch.metrics) as EMF lines on
stdout, for CloudWatch Logs to turn into metrics: counts per service and overall, and the pace."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.settings import Settings
from tests.support.dispatching import World, start_scheduler
from tests.support.planning import BudgetContext


def emf_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


def test_a_dispatcher_invocation_publishes_its_counts_and_its_pace(
    aws: Settings, clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import dispatcher_handler

    # Given a service sending every 0.5 s with 4 emails queued
    start_scheduler(clock.now())
    world = World(aws, clock)
    world.service("svc_a", sending_rate=0.5)
    world.campaign("alice", 4, ["svc_a"])
    dispatcher_handler.runtime.cache_clear()
    dispatcher_handler.runtime().clock = clock  # the fake clock: its sleeps keep the pace exactly
    capsys.readouterr()

    # When one invocation sends them
    summary = dispatcher_handler.lambda_handler({"service_id": "svc_a"}, BudgetContext(20))

    # Then its metrics are on stdout: per service with the pace kept, and over all services
    assert summary["sent"] == 4
    documents = emf_lines(capsys.readouterr().out)
    (per_service,) = [doc for doc in documents if doc.get("ServiceId") == "svc_a"]
    assert per_service["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["ServiceId"]]
    assert (per_service["Sent"], per_service["Failed"], per_service["Throttled"], per_service["Unknown"]) == (
        [4.0],
        [0.0],
        [0.0],
        [0.0],
    )
    assert per_service["PaceAchieved"] == [pytest.approx(100.0)]
    (overall,) = [doc for doc in documents if "ServiceId" not in doc]
    assert overall["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]]
    assert overall["Sent"] == [4.0] and overall["Throttled"] == [0.0]
