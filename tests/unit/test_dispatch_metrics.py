"""Metric values (core.dispatch.metrics), checked on the EMF documents Powertools serializes, as its
testing guide does (`serialize_metric_set`), and on the lines it prints (captured stdout)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_lambda_powertools.metrics import EphemeralMetrics

from core.dispatch.dispatcher import DispatchReport
from core.dispatch.metrics import dispatch_metrics, health_metrics, pace_achieved, publish


def emf(document: EphemeralMetrics) -> tuple[list[list[str]], dict[str, Any]]:
    """(the dimension sets, the metric and dimension values) of one document."""
    serialized: dict[str, Any] = dict(document.serialize_metric_set())
    directive = serialized.pop("_aws")["CloudWatchMetrics"][0]
    return directive["Dimensions"], serialized


@pytest.mark.parametrize(
    ("send_times", "interval", "expected"),
    [
        ([0.0, 1.0, 2.0, 3.0], 1.0, 100.0),  # on pace
        ([0.0, 1.0, 2.5], 1.0, 80.0),  # 2 intervals' worth of sends took 2.5 s
        ([0.0, 0.5, 1.0], 1.0, 100.0),  # faster than configured is capped at 100
        ([0.0, 10.0], 0.2, 2.0),  # a long wait for work (or a throttle back-off) counts against it
        ([5.0], 1.0, None),  # one send: no time passed, nothing to say
        ([], 1.0, None),
        ([0.0, 1.0], 0.0, None),
    ],
)
def test_pace_achieved(send_times: list[float], interval: float, expected: float | None) -> None:
    assert pace_achieved(send_times, interval) == expected


def test_an_invocation_reports_its_counts_per_service_and_overall_and_its_pace() -> None:
    report = DispatchReport(
        service_id="svc_a", sent=3, failed=1, throttled=2, unknown=1, requeued=2, send_times=[10.0, 11.0, 12.5]
    )

    per_service, overall = dispatch_metrics(report, interval=1.0)

    dimensions, values = emf(per_service)
    assert dimensions == [["ServiceId"]] and values["ServiceId"] == "svc_a"
    assert {name: values[name] for name in ("Sent", "Failed", "Throttled", "Unknown", "PaceAchieved")} == {
        "Sent": [3.0],
        "Failed": [1.0],
        "Throttled": [2.0],
        "Unknown": [1.0],
        "PaceAchieved": [80.0],
    }
    dimensions, values = emf(overall)
    assert dimensions == [[]]  # one alarm over every service: no dimension at all (not even `service`)
    assert values == {"Sent": [3.0], "Failed": [1.0], "Throttled": [2.0], "Unknown": [1.0]}


def test_an_invocation_without_two_sends_reports_no_pace() -> None:
    (per_service, _) = dispatch_metrics(DispatchReport(service_id="svc_a", sent=1, send_times=[3.0]), interval=1.0)
    assert "PaceAchieved" not in emf(per_service)[1]


def test_a_health_run_reports_each_service_and_the_unhealthy_count() -> None:
    documents = health_metrics({"svc_a": True, "svc_b": False}, unhealthy=1)
    serialized = [emf(document) for document in documents]
    assert serialized == [
        ([["ServiceId"]], {"ServiceId": "svc_a", "ServiceHealthy": [1.0]}),
        ([["ServiceId"]], {"ServiceId": "svc_b", "ServiceHealthy": [0.0]}),
        ([[]], {"UnhealthyServices": [1.0]}),
    ]


def test_published_documents_are_emf_lines_on_stdout_in_the_configured_namespace(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "EdmScheduler/prod")
    publish(health_metrics({"svc_a": False}, unhealthy=1))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["_aws"]["CloudWatchMetrics"][0]["Namespace"] for line in lines] == ["EdmScheduler/prod"] * 2
    assert lines[1]["UnhealthyServices"] == [1.0]


def test_nothing_is_printed_when_metrics_are_disabled(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    publish(health_metrics({"svc_a": True}, unhealthy=0))
    assert capsys.readouterr().out == ""
