"""CloudWatch metrics of sending and of service health, as Powertools embedded metric format (EMF)
documents: JSON lines on stdout that CloudWatch Logs turns into metrics (no PutMetricData call).

Namespace: `POWERTOOLS_METRICS_NAMESPACE` (the template sets `EdmScheduler/<stack name>`, so two
stacks in one account never mix; `EdmScheduler` without it). Every document carries exactly the
dimensions named here: Powertools' automatic `service` dimension is left out, so the alarms in
template.yaml name the metrics by these dimensions alone.

| metric | unit | dimensions | from |
|---|---|---|---|
| `Sent`, `Failed`, `Throttled`, `Unknown` | Count | `ServiceId`, and none (all services) | each dispatcher invocation |
| `PaceAchieved` | Percent | `ServiceId` | each dispatcher invocation with two sends or more |
| `ServiceHealthy` | Count (1 or 0) | `ServiceId` | each health check run, per service |
| `UnhealthyServices` | Count | none | each health check run: enabled services found unhealthy |

Each document is a fresh `EphemeralMetrics`, not the shared `Metrics`: the local runner runs several
invocations at once in one process, and the shared one would mix their values. `POWERTOOLS_METRICS_DISABLED`
turns the printing off (the local runner does below INFO log level)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

if TYPE_CHECKING:  # the health function uses this module without loading the dispatcher
    from core.dispatch.dispatcher import DispatchReport

DEFAULT_NAMESPACE = "EdmScheduler"
SERVICE_DIMENSION = "ServiceId"

SENT = "Sent"
FAILED = "Failed"
THROTTLED = "Throttled"
UNKNOWN = "Unknown"
PACE_ACHIEVED = "PaceAchieved"
SERVICE_HEALTHY = "ServiceHealthy"
UNHEALTHY_SERVICES = "UnhealthyServices"


def document(dimensions: Mapping[str, str]) -> EphemeralMetrics:
    """An empty EMF document with exactly these dimensions (none: a metric over everything)."""
    emf = EphemeralMetrics(service="")  # "": no automatic `service` dimension
    if emf.namespace is None:
        emf.namespace = DEFAULT_NAMESPACE
    for name, value in dimensions.items():
        emf.add_dimension(name=name, value=value)
    return emf


def pace_achieved(send_times: Sequence[float], interval: float) -> float | None:
    """Percent of the configured pace kept while sending: every send after the first is worth one
    `interval` (the service's `sending_rate`, seconds between sends), over the time from the first
    send to the last; at most 100. None when it says nothing: fewer than two sends, or no interval."""
    if len(send_times) < 2 or interval <= 0:
        return None
    elapsed = max(send_times) - min(send_times)
    if elapsed <= 0:
        return 100.0
    return min(100.0, 100.0 * (len(send_times) - 1) * interval / elapsed)


def dispatch_metrics(report: DispatchReport, interval: float | None) -> list[EphemeralMetrics]:
    """One invocation's counts per service and over all services, and its pace against `interval`."""
    counts = {SENT: report.sent, FAILED: report.failed, THROTTLED: report.throttled, UNKNOWN: report.unknown}
    per_service = document({SERVICE_DIMENSION: report.service_id})
    overall = document({})
    for name, value in counts.items():
        per_service.add_metric(name=name, unit=MetricUnit.Count, value=value)
        overall.add_metric(name=name, unit=MetricUnit.Count, value=value)
    pace = pace_achieved(report.send_times, interval) if interval is not None else None
    if pace is not None:
        per_service.add_metric(name=PACE_ACHIEVED, unit=MetricUnit.Percent, value=pace)
    return [per_service, overall]


def health_metrics(healthy_by_service: Mapping[str, bool], unhealthy: int) -> list[EphemeralMetrics]:
    """ServiceHealthy per service and the count of unhealthy (enabled) services."""
    documents = []
    for service_id, healthy in healthy_by_service.items():
        per_service = document({SERVICE_DIMENSION: service_id})
        per_service.add_metric(name=SERVICE_HEALTHY, unit=MetricUnit.Count, value=1 if healthy else 0)
        documents.append(per_service)
    overall = document({})
    overall.add_metric(name=UNHEALTHY_SERVICES, unit=MetricUnit.Count, value=unhealthy)
    documents.append(overall)
    return documents


def publish(documents: Iterable[EphemeralMetrics]) -> None:
    """Prints each document as one EMF line (unless POWERTOOLS_METRICS_DISABLED)."""
    for emf in documents:
        if emf.metric_set:
            emf.flush_metrics()
