"""AWS cost per 1,000 emails at no pacing, 10/s and 1/s, from what the dispatch runs counted.

Prices the runs bench/dispatch.py measured (taken from the same `python -m bench` run when it ran
first, else run here): DynamoDB on-demand request units, item-aware (bench.harness.CapacityMeter);
Lambda GB-seconds from the MemorySize and Architectures in template.yaml of the dispatcher function
the pace runs on (the paced one at most 10/s: core.dispatch.tiers) and the invocations' wall clock
(at slow paces mostly waiting for the pace: billed all the same), plus
Lambda requests; EventBridge Scheduler invocations (the service's schedule fires once a minute while
it has work); SQS requests counted on the wire. SES's own price is shown next to it, not added.

Prices: us-east-1, on-demand, without free tiers (see PRICES and docs/performance.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

NAME = "cost"
TARGET_PER_THOUSAND = 0.005  # dollars per 1,000 emails, 5% of SES's own price
PACES = ("none", "10/s", "1/s")
FUNCTION = "DispatcherFunction"
PACED_FUNCTION = "PacedDispatcherFunction"


@dataclass(frozen=True)
class Prices:
    """US East (N. Virginia), in dollars; transcribed from the AWS pricing pages on 2026-12-01."""

    # aws.amazon.com/dynamodb/pricing/on-demand/ (standard table class; the rates since the
    # November 2024 on-demand price cut).
    dynamodb_per_million_write_units: float = 0.625
    dynamodb_per_million_read_units: float = 0.125
    # aws.amazon.com/lambda/pricing/ (first 6 billion GB-seconds a month; 1 ms granularity).
    lambda_per_gb_second_x86_64: float = 0.0000166667
    lambda_per_gb_second_arm64: float = 0.0000133334
    lambda_per_million_requests: float = 0.20
    # aws.amazon.com/eventbridge/pricing/ (Scheduler, after 14 million free invocations a month).
    scheduler_per_million_invocations: float = 1.00
    # aws.amazon.com/sqs/pricing/ (standard queue; one request per 64 KB chunk).
    sqs_per_million_requests: float = 0.40
    # aws.amazon.com/secrets-manager/pricing/ ($0.05 per 10,000 API calls).
    secretsmanager_per_million_requests: float = 5.00
    # aws.amazon.com/ses/pricing/ (outbound email).
    ses_per_thousand_emails: float = 0.10


PRICES = Prices()


@dataclass(frozen=True)
class LambdaConfig:
    memory_mb: int
    architecture: str  # x86_64 or arm64


def function_for(interval_seconds: float) -> str:
    """The dispatcher function a service at this pace runs on."""
    from core.dispatch.tiers import Tier, tier_of

    return PACED_FUNCTION if tier_of(interval_seconds) is Tier.PACED else FUNCTION


def dispatcher_config(template: Mapping[str, Any] | None = None, function: str = FUNCTION) -> LambdaConfig:
    """A dispatcher function's memory and architecture (its own, else the template's Globals)."""
    if template is None:
        from local_runner.template import load_template

        template = load_template()
    defaults = template.get("Globals", {}).get("Function", {})
    props = template["Resources"][function]["Properties"]
    architectures = props.get("Architectures", defaults.get("Architectures", ["x86_64"]))
    return LambdaConfig(int(props.get("MemorySize", defaults.get("MemorySize", 128))), str(architectures[0]))


def lambda_gb_second_price(architecture: str, prices: Prices = PRICES) -> float:
    return prices.lambda_per_gb_second_arm64 if architecture == "arm64" else prices.lambda_per_gb_second_x86_64


@dataclass(frozen=True)
class Usage:
    """What one run used, as bench/dispatch.py reports a pace."""

    emails: int
    write_units: float
    read_units: float
    invocations: int
    invocation_seconds: list[float]
    requests_by_service: dict[str, int]

    @classmethod
    def from_pace(cls, figures: Mapping[str, Any]) -> Usage:
        capacity = figures["capacity"]
        seconds = figures.get("invocation_seconds") or [figures["lambda_seconds"]]
        return cls(
            emails=int(figures["emails"]),
            write_units=float(capacity["write_units"]),
            read_units=float(capacity["read_units"]),
            invocations=int(figures["invocations"]),
            invocation_seconds=[float(value) for value in seconds],
            requests_by_service={str(k): int(v) for k, v in figures["requests_by_service"].items()},
        )

    @property
    def billed_seconds(self) -> float:
        """Lambda bills each invocation's duration rounded up to the millisecond."""
        return sum(math.ceil(seconds * 1000) / 1000 for seconds in self.invocation_seconds)

    @property
    def schedule_fires(self) -> int:
        """The service's rate(1 minute) schedule fires once a minute while the service sends."""
        return max(1, math.ceil(self.billed_seconds / 60))


@dataclass(frozen=True)
class Cost:
    """Dollars per 1,000 emails."""

    dynamodb_writes: float
    dynamodb_reads: float
    lambda_duration: float
    lambda_duration_arm64: float  # the same seconds at the arm64 price, for comparison
    lambda_requests: float
    scheduler: float
    sqs: float
    secretsmanager: float

    @property
    def total(self) -> float:
        return (
            self.dynamodb_writes
            + self.dynamodb_reads
            + self.lambda_duration
            + self.lambda_requests
            + self.scheduler
            + self.sqs
            + self.secretsmanager
        )


def cost_per_thousand(usage: Usage, config: LambdaConfig, prices: Prices = PRICES) -> Cost:
    per_email = 1000 / usage.emails
    gb_seconds = usage.billed_seconds * config.memory_mb / 1024
    # Every invocation is a Lambda request; a schedule fire that finds the lease held is one too.
    lambda_requests = max(usage.invocations, usage.schedule_fires) + usage.requests_by_service.get("lambda", 0)
    return Cost(
        dynamodb_writes=usage.write_units * prices.dynamodb_per_million_write_units / 1e6 * per_email,
        dynamodb_reads=usage.read_units * prices.dynamodb_per_million_read_units / 1e6 * per_email,
        lambda_duration=gb_seconds * lambda_gb_second_price(config.architecture, prices) * per_email,
        lambda_duration_arm64=gb_seconds * prices.lambda_per_gb_second_arm64 * per_email,
        lambda_requests=lambda_requests * prices.lambda_per_million_requests / 1e6 * per_email,
        scheduler=usage.schedule_fires * prices.scheduler_per_million_invocations / 1e6 * per_email,
        sqs=usage.requests_by_service.get("sqs", 0) * prices.sqs_per_million_requests / 1e6 * per_email,
        secretsmanager=usage.requests_by_service.get("secretsmanager", 0)
        * prices.secretsmanager_per_million_requests
        / 1e6
        * per_email,
    )


def dispatch_paces(quick: bool) -> dict[str, Any]:
    """The dispatch benchmark's runs: from earlier in this `python -m bench` run, else run now."""
    from bench import dispatch
    from bench.harness import prior_result, say

    prior = prior_result("dispatch", quick)
    if prior is not None:
        paces: dict[str, Any] = prior["paces"]
        return paces
    say("cost: the dispatch benchmark did not run before this one; running its paces now")
    return dispatch.run(quick, rounds=1, labels=PACES)


def summary(paces: Mapping[str, Any], configs: Mapping[str, LambdaConfig], prices: Prices = PRICES) -> dict[str, Any]:
    """`configs`: the Lambda configuration each pace label runs on."""
    by_pace: dict[str, Any] = {}
    rows = []
    met = True
    for label in PACES:
        usage = Usage.from_pace(paces[label])
        config = configs[label]
        cost = cost_per_thousand(usage, config, prices)
        ok = cost.total <= TARGET_PER_THOUSAND
        met = met and ok
        parts = {key: round(value, 6) for key, value in asdict(cost).items()}
        by_pace[label] = {
            "per_thousand_emails": round(cost.total, 6),
            "parts": parts,
            "write_units_per_email": round(usage.write_units / usage.emails, 3),
            "read_units_per_email": round(usage.read_units / usage.emails, 3),
            "lambda_seconds_per_email": round(usage.billed_seconds / usage.emails, 4),
            "lambda": {"memory_mb": config.memory_mb, "architecture": config.architecture},
            "invocations": usage.invocations,
            "schedule_fires": usage.schedule_fires,
            "emails": usage.emails,
        }
        dynamodb = cost.dynamodb_writes + cost.dynamodb_reads
        rows.append(
            {
                "measure": f"AWS cost per 1,000 emails at {label} ({usage.emails} emails)",
                "figure": (
                    f"${cost.total:.4f} (DynamoDB ${dynamodb:.4f}: {usage.write_units / usage.emails:.1f} WRU + "
                    f"{usage.read_units / usage.emails:.2f} RRU/email; Lambda ${cost.lambda_duration:.4f}: "
                    f"{usage.billed_seconds / usage.emails:.3f} s/email at {config.memory_mb} MB)"
                ),
                "target": f"<= ${TARGET_PER_THOUSAND}",
                "met": ok,
            }
        )
    rows.append(
        {
            "measure": "SES's own price per 1,000 emails, for scale",
            "figure": f"${prices.ses_per_thousand_emails:.2f}",
            "target": "report",
            "met": None,
        }
    )
    return {
        "name": NAME,
        "per_thousand_emails": {label: by_pace[label]["per_thousand_emails"] for label in PACES},
        "paces": by_pace,
        "lambda": {
            label: {"memory_mb": configs[label].memory_mb, "architecture": configs[label].architecture}
            for label in PACES
        },
        "prices": asdict(prices),
        "target": {"per_thousand_emails": TARGET_PER_THOUSAND},
        "met": met,
        "rows": rows,
    }


def measure(quick: bool = False) -> dict[str, Any]:
    paces = dispatch_paces(quick)
    configs = {label: dispatcher_config(function=function_for(paces[label]["interval_seconds"])) for label in PACES}
    return summary(paces, configs)


def main(argv: list[str] | None = None) -> None:
    from bench import harness

    harness.cli(measure, __doc__, argv)


if __name__ == "__main__":
    main()
